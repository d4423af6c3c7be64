import pytest

from duplidog.errors import DuplidogError
from duplidog.sequence import FramePattern, format_frame_list, parse_frame_range


@pytest.mark.parametrize(
    "pattern, expected",
    [("a/plate.%04d.exr", "a/plate.1001.exr"), ("a/plate.####.exr", "a/plate.1001.exr"),
     ("plate.#.exr", "plate.1001.exr"), ("a/p.@@@@@@.dpx", "a/p.001001.dpx"), ("p.%d.png", "p.1001.png"),
     ("p_@.tif", "p_1001.tif")],
)
def test_padding_styles(pattern, expected):
    assert FramePattern(pattern).path(1001) == expected


def test_wider_frames_than_padding_are_written_in_full():
    assert FramePattern("p.%04d.exr").path(12345) == "p.12345.exr"
    assert FramePattern("p.%04d.exr").path(7) == "p.0007.exr"


def test_existing_frames_only_match_the_exact_padding(tmp_path):
    for name in ["plate.1001.exr", "plate.1002.exr", "plate.01003.exr", "plate.1004.exr.tmp", "other.1005.exr"]:
        (tmp_path / name).touch()
    assert FramePattern(str(tmp_path / "plate.%04d.exr")).existing_frames() == [1001, 1002]
    assert FramePattern(str(tmp_path / "plate.@@@@@.exr")).existing_frames() == [1003]
    assert FramePattern(str(tmp_path / "missing/plate.%04d.exr")).existing_frames() == []


@pytest.mark.parametrize("bad", ["plate.exr", "plate.%04d.%04d.exr", "plates_%04d/p.exr"])
def test_patterns_need_one_frame_field_in_the_file_name(bad, tmp_path):
    with pytest.raises(DuplidogError):
        FramePattern(bad).existing_frames()


def test_frame_ranges():
    assert parse_frame_range("1001-1003,1010") == [1001, 1002, 1003, 1010]
    assert parse_frame_range("1001-1009x4") == [1001, 1005, 1009]
    assert parse_frame_range(None) is None
    assert parse_frame_range(1005) == [1005]
    with pytest.raises(DuplidogError, match="1010-1001"):
        parse_frame_range("1010-1001")
    with pytest.raises(DuplidogError, match="abc"):
        parse_frame_range("abc")
    assert format_frame_list([1001, 1002, 1003, 1007]) == "1001-1003, 1007"
