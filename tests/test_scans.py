"""``scans.csv`` without a model: the scan aggregates, their labels, ``salad-score merge``, heat-map volumes.

The folders here are written as ``salad-score`` writes them (``run.json``, ``scores.csv``, ``errors.csv``,
``completed_files.txt``); runs of the real command over DICOM series and NIfTI volumes are in score_checks.py.
Nothing here loads OpenVINO.
"""

import csv
import gzip
import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anomalib_salad.data.reader import ReaderConfig, read_image, read_images, slice_to_plane
from anomalib_salad.deploy.overlay import HeatVolume
from anomalib_salad.deploy.score import (
    SCAN_COLUMNS,
    SCORE_COLUMNS,
    UsageError,
    aggregate_scans,
    main,
    merge,
    scan_score,
    select_shard,
)

from .medical_files import scan_volume

SERIES, OTHER, STUDY = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.9"


def _row(path: str, score: float, kind: str, scan: str, study: str = "", modality: str = "") -> dict[str, str]:
    label = "anomalous" if score > 0.5 else "normal"
    values = (path, f"{score:.6f}", label, kind, scan, study, modality)
    return dict(zip(SCORE_COLUMNS, values, strict=True))


def _rows() -> list[dict[str, str]]:
    """A series over two folders (one file multi-frame), a second series, a volume, an image, a loose DICOM file."""
    return [
        _row("/a/s1/IM1.dcm", 0.20, "dicom_series", SERIES, STUDY, "CT"),
        _row("/a/s1/IM2.dcm", 0.61, "dicom_series", SERIES, STUDY, "CT"),
        _row("/b/s1/IM3.dcm:frame:0", 0.55, "dicom_series", SERIES, STUDY, "CT"),
        _row("/b/s1/IM3.dcm:frame:1", 0.30, "dicom_series", SERIES, STUDY, "CT"),
        _row("/a/s2/IM1.dcm", 0.40, "dicom_series", OTHER, STUDY, "MR"),
        _row("/a/s2/IM2.dcm", 0.45, "dicom_series", OTHER, STUDY, "MR"),
        _row("/v/brain.nii.gz:2:3", 0.52, "nifti_volume", "/v/brain.nii.gz"),
        _row("/v/brain.nii.gz:2:4", 0.10, "nifti_volume", "/v/brain.nii.gz"),
        _row("/v/brain.nii.gz:2:5", 0.49, "nifti_volume", "/v/brain.nii.gz"),
        _row("/p/photo.png", 0.70, "image", "/p/photo.png"),
        _row("/a/loose.dcm", 0.33, "dicom_file", "/a/loose.dcm", STUDY, "US"),
    ]


def test_scan_score_definitions() -> None:
    scores = [0.2, 0.9, 0.4, 0.7]
    assert scan_score(scores) == 0.9
    assert scan_score(scores, "mean-top-k", 2) == pytest.approx(0.8)
    assert scan_score(scores, "mean-top-k", 1) == scan_score(scores, "max")
    assert scan_score(scores, "mean-top-k", 10) == pytest.approx(sum(scores) / 4)  # fewer slices than K: all
    for method, top_k in (("median", 3), ("mean-top-k", 0)):
        with pytest.raises(ValueError, match=r"scan score must be one of|top_k must be an int >= 1"):
            scan_score(scores, method, top_k)
    with pytest.raises(ValueError, match="at least one slice score"):
        scan_score([])


def test_scans_are_grouped_by_series_and_file_in_any_row_order() -> None:
    rows = _rows()
    table = aggregate_scans(rows)
    for seed in range(5):  # results arrive in completion order: the table must not depend on it
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        assert aggregate_scans(shuffled) == table
    assert all(tuple(scan) == SCAN_COLUMNS for scan in table)
    assert [scan["scan"] for scan in table] == ["/a/loose.dcm", SERIES, OTHER, "/p/photo.png", "/v/brain.nii.gz"]
    scans = {scan["scan"]: scan for scan in table}
    series = scans[SERIES]  # its files lie in two folders, one of them multi-frame
    assert (series["scan_kind"], series["series_uid"], series["study_uid"], series["modality"]) == (
        "dicom_series",
        SERIES,
        STUDY,
        "CT",
    )
    assert (series["slices"], series["score"], series["label"], series["top_slice"]) == (
        "4",
        "0.610000",
        "anomalous",
        "/a/s1/IM2.dcm",
    )
    assert (scans[OTHER]["score"], scans[OTHER]["label"], scans[OTHER]["modality"]) == ("0.450000", "normal", "MR")
    volume = scans["/v/brain.nii.gz"]
    assert (volume["scan_kind"], volume["series_uid"], volume["slices"], volume["top_slice"]) == (
        "nifti_volume",
        "",
        "3",
        "/v/brain.nii.gz:2:3",
    )
    assert (scans["/p/photo.png"]["slices"], scans["/a/loose.dcm"]["scan_kind"]) == ("1", "dicom_file")
    assert sum(int(scan["slices"]) for scan in table) == len(rows)  # every image in exactly one scan
    assert {scan["aggregate"] for scan in table} == {"max"}


def test_mean_top_k_and_the_threshold() -> None:
    table = {scan["scan"]: scan for scan in aggregate_scans(_rows(), "mean-top-k", 2)}
    assert table[SERIES]["score"] == "0.580000"  # (0.61 + 0.55) / 2
    assert table[SERIES]["top_slice_score"] == "0.610000"
    assert table[SERIES]["aggregate"] == "mean-top-2"
    assert table["/v/brain.nii.gz"]["score"] == "0.505000"
    assert table["/v/brain.nii.gz"]["label"] == "anomalous"
    assert table["/p/photo.png"]["score"] == "0.700000"  # one slice: its own score
    # A model exported with another sensitivity labels above its own threshold; the scans follow it.
    higher = {scan["scan"]: scan for scan in aggregate_scans(_rows(), "mean-top-k", 2, threshold=0.6)}
    assert (higher[SERIES]["label"], higher["/p/photo.png"]["label"]) == ("normal", "anomalous")
    at_threshold = [
        _row("/v/x.nii:2:0", 0.5, "nifti_volume", "/v/x.nii"),
        _row("/v/x.nii:2:1", 0.5, "nifti_volume", "/v/x.nii"),
    ]
    assert aggregate_scans(at_threshold, "mean-top-k", 2)[0]["label"] == "normal"  # labels are score > threshold


def test_max_takes_the_label_of_its_top_slice() -> None:
    # Two slices whose scores round to the same 6 decimals, on both sides of the threshold as the graph saw them.
    rows = [
        _row("/v/x.nii:2:0", 0.5, "nifti_volume", "/v/x.nii"),
        _row("/v/x.nii:2:1", 0.5, "nifti_volume", "/v/x.nii"),
    ]
    rows[1]["label"] = "anomalous"
    for order in (rows, rows[::-1]):
        (scan,) = aggregate_scans(order)
        assert (scan["label"], scan["top_slice"]) == ("anomalous", "/v/x.nii:2:1")


# --------------------------------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------------------------------

FILES = sorted({row["path"].split(":")[0] for row in _rows()} | {"/a/broken.dcm"})
RUN = {"model": "/m/model.xml", "input": "/in", "reader": {"window": "file"}, "input_files": len(FILES)}
RUN |= {"input_sha256": "ab" * 32, "label_threshold": 0.5}


def _write_shard(folder: Path, part: int, total: int, finished: bool = True, **run: object) -> Path:
    """A shard's output folder as salad-score leaves it; its rows in a scrambled (completion) order."""
    files = select_shard(FILES, part, total)
    rows = [row for row in _rows() if row["path"].split(":")[0] in files]
    random.Random(part).shuffle(rows)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(RUN | {"shard": f"{part}/{total}"} | run))
    with (folder / "scores.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    broken = "/a/broken.dcm" in files
    (folder / "errors.csv").write_text("path,reason\n" + ("/a/broken.dcm,not a DICOM file (...)\n" if broken else ""))
    done = [path for path in files if path != "/a/broken.dcm"]
    (folder / "completed_files.txt").write_text("".join(f"{path}\n" for path in done[: None if finished else -1]))
    return folder


def _table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_merging_shards_gives_the_table_of_one_run(tmp_path: Path) -> None:
    shards = [_write_shard(tmp_path / f"part{part}", part, 3) for part in (3, 1, 2)]
    assert main(["merge", "--output", str(tmp_path / "merged"), *map(str, shards)]) == 1  # broken.dcm failed
    merged = tmp_path / "merged"
    assert _table(merged / "scans.csv") == aggregate_scans(_rows())
    assert _table(merged / "scores.csv") == sorted(_rows(), key=lambda row: row["path"])
    assert [row["path"] for row in _table(merged / "errors.csv")] == ["/a/broken.dcm"]
    assert len((merged / "completed_files.txt").read_text().splitlines()) == len(FILES) - 1
    run = json.loads((merged / "run.json").read_text())
    assert (run["shard"], len(run["merged_from"])) == ("1/1", 3)
    # The merged folder is a whole run: merged alone, it gets its scans again, here as mean-top-2.
    assert (
        main(["merge", "--output", str(tmp_path / "top2"), str(merged), "--scan-score", "mean-top-k", "--top-k", "2"])
        == 1
    )
    assert _table(tmp_path / "top2" / "scans.csv") == aggregate_scans(_rows(), "mean-top-k", 2)
    assert merge([merged], tmp_path / "again") == (len(_rows()), 5, 1)


def test_merge_refuses_what_is_not_one_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    one, two = _write_shard(tmp_path / "1", 1, 2), _write_shard(tmp_path / "2", 2, 2)
    cases = {
        "shard 2/2 missing": [one],
        "shard 1/2 given twice": [one, one, two],
        "their model differ": [one, _write_shard(tmp_path / "m", 2, 2, model="/m/other.xml")],
        "their input_sha256 differ": [one, _write_shard(tmp_path / "i", 2, 2, input_sha256="cd" * 32)],
        "split the input differently": [one, _write_shard(tmp_path / "t", 2, 3)],
        r"shard 2/2 in .* is not finished \(\d+ of \d+ files\): --resume it": [
            one,
            _write_shard(tmp_path / "u", 2, 2, finished=False),
        ],
        "holds no salad-score run": [one, tmp_path / "nothing"],
    }
    for message, folders in cases.items():
        with pytest.raises(UsageError, match=message):
            merge(folders, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    old = _write_shard(tmp_path / "old", 2, 2)
    (old / "scores.csv").write_text("path,score,label\n/a/x.png,0.1,normal\n")
    with pytest.raises(UsageError, match="written by an older salad-score"):
        merge([one, old], tmp_path / "out")
    twice = _write_shard(tmp_path / "twice", 2, 2)
    with (twice / "scores.csv").open("a", newline="") as handle:  # an image of shard 1 in shard 2 as well
        csv.DictWriter(handle, fieldnames=SCORE_COLUMNS).writerow(_table(one / "scores.csv")[0])
    with pytest.raises(UsageError, match="is scored in both"):
        merge([one, twice], tmp_path / "out")
    assert main(["merge", "--output", str(tmp_path / "done"), str(one), str(two)]) == 1
    with pytest.raises(UsageError, match=r"already holds scores\.csv"):
        merge([one, two], tmp_path / "done")
    with pytest.raises(UsageError, match="is one of the folders to merge"):
        merge([one, two], one)
    assert main(["merge", "--output", str(tmp_path / "x"), str(one), str(two), "--top-k", "2"]) == 2
    assert "--top-k is the K of --scan-score mean-top-k" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# Heat-map volumes: each slice's map back where the reader cut it
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_heat_volume_puts_each_slice_back_where_the_reader_cut_it(axis: int, tmp_path: Path) -> None:
    volume = np.moveaxis(scan_volume(depth=9, empty=2, size=40)[:, 4:36, :], 2, axis)  # 40 x 32 x 9, moved
    source = nib.Nifti1Image(volume, np.diag([0.8, 1.2, 3.0, 1.0]))
    source.header["descrip"] = b"Xqzvorth"
    nib.save(source, tmp_path / "vol.nii.gz")
    config = ReaderConfig(axis=axis)
    heat = HeatVolume(str(tmp_path / "vol.nii.gz"))
    kept = dict(read_images(tmp_path / "vol.nii.gz", config))
    for item, image in kept.items():
        heat.add(item, image[..., 0], image.shape[:2])  # the slice itself as its "map", at its own size
    heat.save(tmp_path / "out" / "vol.heatmap.nii.gz")
    written = nib.load(tmp_path / "out" / "vol.heatmap.nii.gz")
    assert written.shape == volume.shape
    np.testing.assert_array_equal(written.affine, nib.load(tmp_path / "vol.nii.gz").affine)  # as stored: float32
    assert b"Xqzvorth" not in gzip.decompress((tmp_path / "out" / "vol.heatmap.nii.gz").read_bytes())
    voxels = written.get_fdata()
    for index in range(volume.shape[axis]):
        plane = np.take(voxels, index, axis=axis)
        image = kept.get(f"{tmp_path / 'vol.nii.gz'}:{axis}:{index}")
        if image is None:
            assert not plane.any()  # a slice the reader skipped
        else:
            np.testing.assert_allclose(plane, slice_to_plane(image[..., 0]), atol=1e-6)
            np.testing.assert_array_equal(read_image(f"{tmp_path / 'vol.nii.gz'}:{axis}:{index}", config), image)
    assert len(kept) == volume.shape[axis] - 4  # the empty slices at both ends were skipped
    assert not list((tmp_path / "out").glob(".*"))  # no partial file left


@pytest.mark.parametrize("shape", [(32, 32, 6, 1), (32, 32)])
def test_heat_volume_keeps_a_singleton_fourth_axis_or_a_single_slice(shape: tuple[int, ...], tmp_path: Path) -> None:
    volume = scan_volume(depth=6, empty=1).reshape(shape) if len(shape) == 4 else scan_volume(depth=1, empty=0)[..., 0]
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "vol.nii")
    heat = HeatVolume(str(tmp_path / "vol.nii"))
    for item, image in read_images(tmp_path / "vol.nii"):
        heat.add(item, np.ones((8, 8), np.float32), image.shape[:2])  # a map at network size, resized to the slice
    heat.save(tmp_path / "vol.heatmap.nii.gz")
    written = nib.load(tmp_path / "vol.heatmap.nii.gz")
    assert written.shape == shape
    assert np.count_nonzero(written.get_fdata()) == 32 * 32 * (4 if len(shape) == 4 else 1)
