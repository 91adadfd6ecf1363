"""The African fetal-planes reader (Zenodo 7540448) on a tiny tree mirroring the documented layout.

Layout (from the dataset's documentation): `Zenodo_dataset/African_planes_database.csv` with
`Patient_num,Plane,Train,Center,Filename` and `<Center>/<Filename>.png`, e.g.
`Algeria/patient001_DZA_plane0.png`; patient numbers restart in every country.
"""

import numpy as np
import pytest
from curation_testutil import build, check_consistent
from PIL import Image

from dinov3_us.errors import DataError

COUNTRIES = {"Algeria": "DZA", "Egypt": "EGY", "Malawi": "MWI"}
PLANES = ["Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax"]


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.zeros((60, 80), np.uint8)
    arr[5:55, 10:70] = rng.integers(20, 200, size=(50, 60))
    return Image.fromarray(arr)


@pytest.fixture
def fplr_root(tmp_path):
    base = tmp_path / "download" / "Zenodo_dataset"
    rows = ["Patient_num,Plane,Train,Center,Filename"]
    seed = 0
    for country, code in COUNTRIES.items():
        (base / country).mkdir(parents=True)
        for patient in range(1, 6):
            for plane_index, plane in enumerate(PLANES):
                name = f"patient{patient:03d}_{code}_plane{plane_index}"
                rows.append(f"{patient},{plane},{int(patient <= 3)},{country},{name}")
                seed += 1
                _image(seed).save(base / country / f"{name}.png")
    rows.append("9,Fetal heart,1,Egypt,patient009_EGY_plane4")  # unknown plane
    rows.append("7,Fetal brain,0,Malawi,patient007_MWI_plane1")  # row without image
    (base / "African_planes_database.csv").write_text("\n".join(rows) + "\n")
    _image(999).save(base / "Algeria" / "patient099_DZA_plane0.png")  # image without row
    return tmp_path / "download"


def test_reads_the_documented_layout(fplr_root, tmp_path):
    manifest = build(tmp_path / "out", source="fplr", root=fplr_root, dedup=False)
    assert manifest["labels"] == PLANES and manifest["task"] == "planes"
    assert manifest["skipped"] == {"missing_file": 1, "unknown_label": 1, "unlisted_file": 1}
    counts = {s: sum(t.values()) for s, t in manifest["counts"].items()}
    assert counts["test"] == 3 * 2 * 4 and counts["train"] + counts["val"] == 3 * 3 * 4
    # 9 train patients (3 per country, numbers shared across countries) -> round(0.2 * 9) = 2 in val
    assert counts["val"] == 2 * 4
    samples = check_consistent(tmp_path / "out")
    patients = {item["meta"]["patient"] for items in samples.values() for item in items}
    assert len(patients) == 15 and "Egypt-1" in patients and "Malawi-1" in patients
    meta = samples["test"][0]["meta"]
    assert meta["country"] in COUNTRIES and meta["file"].startswith(meta["country"] + "/")
    assert meta["label"] == meta["plane"] and meta["official_train"] is False


def test_root_may_be_the_csv_folder_and_errors_are_clear(fplr_root, tmp_path):
    manifest = build(tmp_path / "out", source="fplr", root=fplr_root / "Zenodo_dataset", dedup=False)
    assert manifest["num_samples"] == 60
    with pytest.raises(DataError, match="African_planes_database.csv not found"):
        build(tmp_path / "o2", source="fplr", root=tmp_path / "out")
    csv = fplr_root / "Zenodo_dataset" / "African_planes_database.csv"
    csv.write_text(csv.read_text().replace("Center", "Hospital"))
    with pytest.raises(DataError, match="missing column 'Center'"):
        build(tmp_path / "o3", source="fplr", root=fplr_root)
    with pytest.raises(DataError, match="--task 'brain-planes'"):
        build(tmp_path / "o4", source="fplr", root=fplr_root, task="brain-planes")
