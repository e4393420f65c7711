"""The radiomics baseline: features of known shapes, table and patch input, failures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import patch_transformer_expected_failures
from sklearn.utils.estimator_checks import parametrize_with_checks

from skfmcib.patches import RowWarning, load_patches
from skfmcib.radiomics import RADIOMICS_FEATURES, RadiomicsTransformer, radiomics_features

K = np.arange(50) - 25
Z, Y, X = np.meshgrid(K, K, K, indexing="ij")
R = np.sqrt(X**2 + Y**2 + Z**2)


def normalised(hu: np.ndarray) -> np.ndarray:
    return ((hu + 1024.0) / 3072.0).astype(np.float32)


def features_of(hu: np.ndarray, **kwargs) -> dict[str, float]:
    return dict(zip(RADIOMICS_FEATURES, radiomics_features(normalised(hu), **kwargs), strict=True))


@pytest.mark.parametrize("diameter", [10, 16, 24, 30])
def test_sphere_size_and_intensity_are_recovered(diameter):
    f = features_of(np.where(R <= diameter / 2, 40.0, -900.0))
    assert f["equivalent_diameter_mm"] == pytest.approx(diameter, abs=0.8)
    assert f["major_axis_mm"] == pytest.approx(diameter, rel=0.15)
    assert f["hu_median"] == pytest.approx(40.0, abs=1e-3)
    assert f["core_hu_mean"] == pytest.approx(40.0, abs=1e-3)
    assert f["shell_hu_mean"] == pytest.approx(-900.0, abs=1e-3)
    assert f["border_fraction"] == 0.0
    assert f["elongation"] == pytest.approx(1.0, abs=0.05)
    # counted voxel faces overestimate a smooth sphere's area by about 1.5
    assert 0.6 < f["sphericity"] < 0.75


def test_shape_features_order_compact_and_elongated_lesions():
    sphere = features_of(np.where(R <= 8, 40.0, -900.0))
    rod = features_of(
        np.where((X / 14.0) ** 2 + (Y / 5.0) ** 2 + (Z / 5.0) ** 2 <= 1, 40.0, -900.0)
    )
    disc = features_of(
        np.where((X / 12.0) ** 2 + (Y / 12.0) ** 2 + (Z / 3.0) ** 2 <= 1, 40.0, -900.0)
    )
    assert rod["elongation"] == pytest.approx(5 / 14, abs=0.05)
    assert rod["flatness"] == pytest.approx(5 / 14, abs=0.05)
    assert rod["major_axis_mm"] == pytest.approx(28, rel=0.1)
    assert disc["elongation"] == pytest.approx(1.0, abs=0.05)
    assert disc["flatness"] == pytest.approx(3 / 12, abs=0.06)
    assert sphere["sphericity"] > rod["sphericity"] and sphere["sphericity"] > disc["sphericity"]


def test_surface_area_counts_voxel_faces():
    cube = np.where((np.abs(X) <= 3) & (np.abs(Y) <= 3) & (np.abs(Z) <= 3), 300.0, -1000.0)
    f = features_of(cube, smoothing_mm=0)
    assert f["volume_mm3"] == 7**3
    assert f["surface_area_mm2"] == 6 * 7**2


def test_region_stops_at_a_neighbouring_organ():
    """A 40 HU lesion inside 120 HU tissue, next to air: the region is the lesion only."""
    hu = np.where(X < 20, 120.0, -1000.0)
    hu[R <= 7] = 40.0
    f = features_of(hu)
    assert f["equivalent_diameter_mm"] == pytest.approx(14, abs=1.0)
    assert f["shell_hu_mean"] == pytest.approx(120.0, abs=5.0)


def test_intensity_statistics_of_a_textured_lesion():
    rng = np.random.default_rng(0)
    hu = np.full(R.shape, -900.0)
    inside = R <= 10
    hu[inside] = 50.0 + 20.0 * rng.standard_normal(inside.sum())
    f = features_of(hu, smoothing_mm=1.0)
    values = hu[inside]
    assert f["hu_mean"] == pytest.approx(values.mean(), abs=3.0)
    assert f["hu_std"] == pytest.approx(values.std(), rel=0.15)
    assert abs(f["hu_skewness"]) < 0.3 and abs(f["hu_kurtosis"]) < 0.5
    assert f["hu_p10"] < f["hu_median"] < f["hu_p90"]
    assert f["hu_entropy"] > 1.0
    assert f["gradient_mean"] < f["edge_gradient_mean"]


def test_uniform_patch_has_finite_features():
    f = features_of(np.full(R.shape, 40.0))
    assert all(np.isfinite(v) for v in f.values())
    assert f["hu_std"] == 0.0 and f["hu_skewness"] == 0.0 and f["hu_kurtosis"] == 0.0


@pytest.mark.parametrize("pair", [(100, 110), (25, 35), (0, 10), (-50, -40)])
def test_entropy_bins_whole_hu_values_of_float32_patches_exactly(pair):
    # Both values lie in one 25 HU bin: entropy 0, though (HU + 1024) / 3072 in float32
    # brings 100 back as 99.99997.
    hu = np.where((X + Y + Z) % 2 == 0, *pair).astype(np.float64)
    assert features_of(hu)["hu_entropy"] == 0.0


def test_the_function_checks_its_input_and_settings():
    with pytest.raises(ValueError, match=r"patch has shape \(40, 40, 40\)"):
        radiomics_features(np.zeros((40, 40, 40)))
    for shape in ((50, 2500), (125000,), (2, 50, 50, 25)):  # the right size, not a cube
        with pytest.raises(ValueError, match=rf"patch has shape \({shape[0]},"):
            radiomics_features(np.zeros(shape))
    assert radiomics_features(normalised(np.zeros((1, 50, 50, 50)))).shape == (22,)
    with pytest.raises(ValueError, match=r"a patch in HU\?"):
        radiomics_features(np.where(R <= 5, 40.0, -1000.0))  # HU, not normalised
    patches = normalised(np.zeros((3, 50, 50, 50)))
    patches[2] = np.where(R <= 5, 40.0, -1000.0)
    with pytest.raises(ValueError, match=r"^patch 2: patch values span"):
        RadiomicsTransformer().fit().transform(patches)
    with pytest.raises(ValueError, match=r"^max_radius_mm must be a number"):
        RadiomicsTransformer().fit().set_params(max_radius_mm=100).transform(patches)
    for name, value in (("max_radius_mm", 40), ("smoothing_mm", -1), ("min_tolerance_hu", -5)):
        with pytest.raises(ValueError, match=name):
            radiomics_features(normalised(np.zeros(R.shape)), **{name: value})


def test_nan_patch_gives_nan_features():
    patch = np.full((50, 50, 50), np.nan, dtype=np.float32)
    assert np.isnan(radiomics_features(patch)).all()


@pytest.fixture
def lesion_table(tmp_path):
    import SimpleITK as sitk

    hu = np.full((70, 80, 90), -900, dtype=np.int16)
    zz, yy, xx = np.meshgrid(np.arange(70), np.arange(80), np.arange(90), indexing="ij")
    centres = [(45.0, 40.0, 35.0), (30.0, 45.0, 40.0)]
    for (cx, cy, cz), r in zip(centres, (6.0, 9.0), strict=True):
        hu[(xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2 <= r**2] = 40
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(path))
    return pd.DataFrame(
        {
            "image_path": [str(path)] * 2,
            "coordX": [c[0] for c in centres],
            "coordY": [c[1] for c in centres],
            "coordZ": [c[2] for c in centres],
        }
    )


def test_table_and_patch_inputs_give_the_same_features(lesion_table):
    radiomics = RadiomicsTransformer().fit(lesion_table)
    from_table = radiomics.transform(lesion_table)
    from_patches = radiomics.transform(load_patches(lesion_table))
    np.testing.assert_allclose(from_table, from_patches)
    assert from_table.shape == (2, len(RADIOMICS_FEATURES))
    diameters = from_table[:, RADIOMICS_FEATURES.index("equivalent_diameter_mm")]
    np.testing.assert_allclose(diameters, [12, 18], atol=1.0)


def test_pandas_output_has_the_feature_names(lesion_table):
    radiomics = RadiomicsTransformer().set_output(transform="pandas")
    out = radiomics.fit_transform(lesion_table)
    assert list(out.columns) == list(RADIOMICS_FEATURES)
    assert list(radiomics.get_feature_names_out()) == list(RADIOMICS_FEATURES)


def test_bad_row_raises_or_becomes_nan(lesion_table, tmp_path):
    table = lesion_table.copy()
    table.loc[1, "image_path"] = str(tmp_path / "absent.nii.gz")
    with pytest.raises(ValueError, match="absent.nii.gz"):
        RadiomicsTransformer().fit_transform(table)
    with pytest.warns(RowWarning, match="absent.nii.gz"):
        out = RadiomicsTransformer(on_error="nan").fit_transform(table)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"min_tolerance_hu": -1}, "min_tolerance_hu"),
        ({"max_radius_mm": 30}, "max_radius_mm"),
        ({"smoothing_mm": "1"}, "smoothing_mm"),
        ({"coordinate_system": "XYZ"}, "coordinate_system"),
        ({"on_error": "skip"}, "on_error"),
    ],
)
def test_invalid_parameters_fail_in_fit(params, match):
    with pytest.raises(ValueError, match=match):
        RadiomicsTransformer(**params).fit()


def test_transform_before_fit_is_an_error():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        RadiomicsTransformer().transform(np.zeros((1, 50, 50, 50)))


EXPECTED_FAILED_CHECKS = patch_transformer_expected_failures("describes")


@parametrize_with_checks(
    [RadiomicsTransformer()], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
