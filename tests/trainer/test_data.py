"""Datasets load without network, split the same way for every trial, and bad files are refused."""

import gzip

import numpy as np
import pytest

from hpsearch.datasets import DatasetSpec
from trainer.data import keras_datasets_dir, load_dataset
from trainer.errors import DatasetError


def test_digits_is_the_bundled_8x8_set_scaled_to_unit_range() -> None:
    data = load_dataset(DatasetSpec(name="digits"))
    assert data.input_shape == (8, 8, 1)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 1_797
    assert data.n_classes == 10
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert data.x_train.dtype == np.float32


def test_mnist_5k_is_the_real_5000_image_subset() -> None:
    data = load_dataset(DatasetSpec(name="mnist_5k"))
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 5_000
    assert data.input_shape == (28, 28, 1)
    assert (
        np.bincount(np.concatenate([data.y_train, data.y_val, data.y_test])).tolist() == [500] * 10
    )


def test_synthetic_is_seeded_and_standardized() -> None:
    spec = DatasetSpec(name="synthetic", n_samples=500, n_features=12, n_informative=6, n_classes=3)
    a, b = load_dataset(spec), load_dataset(spec.model_copy(update={"synthetic_seed": 1}))
    assert a.input_shape == (12,) and a.n_classes == 3
    np.testing.assert_allclose(a.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(a.x_train.std(axis=0), 1.0, atol=1e-4)
    assert not np.array_equal(a.x_train, b.x_train)


def test_splits_depend_on_split_seed_only_and_do_not_overlap() -> None:
    spec = DatasetSpec(name="digits")
    first = load_dataset(spec)
    again = load_dataset(DatasetSpec(name="digits", label_column="label"))  # equal spec
    np.testing.assert_array_equal(first.x_val, again.x_val)
    other = load_dataset(DatasetSpec(name="digits", split_seed=3))
    assert not np.array_equal(first.y_val, other.y_val)
    rows = lambda x: {r.tobytes() for r in x.reshape(len(x), -1)}  # noqa: E731
    assert not rows(first.x_val) & rows(first.x_test) - rows(first.x_train)


def test_validation_share_is_carved_from_training_data() -> None:
    data = load_dataset(DatasetSpec(name="digits", validation_split=0.25, test_split=0.0))
    assert len(data.x_test) == 0
    assert len(data.x_val) == pytest.approx(0.25 * 1_797, abs=1)


def test_mnist_not_in_the_cache_names_the_path_to_place_it_at(keras_home) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(DatasetSpec(name="mnist"))
    reason = info.value.errors[0].reason
    assert str(keras_home / "datasets" / "mnist.npz") in reason
    assert "never downloads" in reason


def test_fashion_mnist_not_in_the_cache_names_the_missing_files(keras_home) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(DatasetSpec(name="fashion_mnist"))
    assert str(keras_home / "datasets" / "fashion-mnist" / "train-images-idx3-ubyte.gz") in str(
        info.value
    )


def test_mnist_in_the_cache_is_used(keras_home) -> None:
    rng = np.random.default_rng(0)
    keras_datasets_dir().mkdir(parents=True)
    np.savez(
        keras_datasets_dir() / "mnist.npz",
        x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
        y_train=np.arange(200) % 10,
        x_test=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        y_test=np.arange(50) % 10,
    )
    data = load_dataset(DatasetSpec(name="mnist"))
    assert len(data.x_test) == 50  # its own test set, not carved
    assert len(data.x_train) + len(data.x_val) == 200
    assert data.x_train.max() <= 1.0


def test_fashion_mnist_in_the_cache_is_used(keras_home) -> None:
    folder = keras_datasets_dir() / "fashion-mnist"
    folder.mkdir(parents=True)

    def idx(name: str, header: int, payload: np.ndarray) -> None:
        with gzip.open(folder / name, "wb") as f:
            f.write(b"\0" * header + payload.astype(np.uint8).tobytes())

    idx("train-images-idx3-ubyte.gz", 16, np.zeros((100, 28, 28)))
    idx("train-labels-idx1-ubyte.gz", 8, np.arange(100) % 10)
    idx("t10k-images-idx3-ubyte.gz", 16, np.zeros((20, 28, 28)))
    idx("t10k-labels-idx1-ubyte.gz", 8, np.arange(20) % 10)
    data = load_dataset(DatasetSpec(name="fashion_mnist"))
    assert data.input_shape == (28, 28, 1) and len(data.x_test) == 20


# --- user files -------------------------------------------------------------------------------


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return DatasetSpec(path=str(path))


def good_arrays(n: int = 120, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n, 5)), "y_train": np.arange(n) % classes}


def test_user_npz_with_its_own_validation_set(tmp_path) -> None:
    arrays = good_arrays()
    arrays.update(x_val=np.ones((30, 5)), y_val=np.arange(30) % 3)
    data = load_dataset(save_npz(tmp_path / "d.npz", **arrays))
    assert len(data.x_val) == 30
    assert data.n_classes == 3


def test_user_csv_with_a_named_label_column(tmp_path) -> None:
    path = tmp_path / "d.csv"
    lines = ["a,b,species"] + [f"{i},{i * 2},{['cat', 'dog'][i % 2]}" for i in range(60)]
    path.write_text("\n".join(lines))
    data = load_dataset(DatasetSpec(path=str(path), label_column="species"))
    assert data.input_shape == (2,) and data.n_classes == 2


def rejected(spec: DatasetSpec) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(spec)
    return str(info.value)


def test_pickled_object_array_is_refused(tmp_path) -> None:
    arrays = good_arrays()
    arrays["x_train"] = np.array([{"evil": 1}] * 120, dtype=object)
    assert "Python objects" in rejected(save_npz(tmp_path / "p.npz", **arrays))


def test_mismatched_lengths_are_refused(tmp_path) -> None:
    arrays = good_arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    assert "x_train has 120 examples but y_train has 119 labels" in rejected(
        save_npz(tmp_path / "m.npz", **arrays)
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_inputs_are_refused(tmp_path, bad) -> None:
    arrays = good_arrays()
    arrays["x_train"][3, 2] = bad
    assert "x_train holds 1 NaN or infinite value(s)" in rejected(
        save_npz(tmp_path / "n.npz", **arrays)
    )


def test_negative_label_is_refused(tmp_path) -> None:
    arrays = good_arrays()
    arrays["y_train"][0] = -1
    assert "negative label (-1)" in rejected(save_npz(tmp_path / "l.npz", **arrays))


def test_fractional_label_is_refused(tmp_path) -> None:
    arrays = good_arrays()
    arrays["y_train"] = arrays["y_train"] + 0.5
    assert "integer class labels" in rejected(save_npz(tmp_path / "f.npz", **arrays))


def test_validation_label_outside_the_training_labels_is_refused(tmp_path) -> None:
    arrays = good_arrays()
    arrays.update(x_val=np.ones((4, 5)), y_val=np.array([0, 1, 2, 7]))
    assert "y_val holds label(s) [7] never seen in y_train" in rejected(
        save_npz(tmp_path / "v.npz", **arrays)
    )


def test_truncated_zip_is_refused(tmp_path) -> None:
    save_npz(tmp_path / "t.npz", **good_arrays())
    whole = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(whole[: len(whole) // 2])
    assert "truncated or corrupt" in rejected(DatasetSpec(path=str(tmp_path / "t.npz")))


def test_missing_arrays_and_strays_are_refused(tmp_path) -> None:
    assert "missing the array 'y_train'" in rejected(
        save_npz(tmp_path / "a.npz", x_train=np.ones((10, 2)))
    )
    assert "unknown array(s) labels" in rejected(
        save_npz(tmp_path / "b.npz", labels=np.ones(3), **good_arrays())
    )
    assert "x_val and y_val must be given together" in rejected(
        save_npz(tmp_path / "c.npz", x_val=np.ones((3, 5)), **good_arrays())
    )


def test_mismatched_example_shapes_are_refused(tmp_path) -> None:
    arrays = good_arrays()
    arrays.update(x_val=np.ones((6, 4)), y_val=np.arange(6) % 3)
    assert "x_val examples have shape (4,) but x_train's have (5,)" in rejected(
        save_npz(tmp_path / "s.npz", **arrays)
    )


def test_string_features_are_refused(tmp_path) -> None:
    arrays = good_arrays()
    arrays["x_train"] = np.array([["a"] * 5] * 120)
    assert "x_train must be numeric" in rejected(save_npz(tmp_path / "u.npz", **arrays))


def test_missing_file_is_refused(tmp_path) -> None:
    assert "no such file" in rejected(DatasetSpec(path=str(tmp_path / "nope.npz")))


def test_csv_without_the_label_column_is_refused(tmp_path) -> None:
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(DatasetSpec(path=str(tmp_path / "d.csv"), label_column="y"))
    assert info.value.errors[0].field == "dataset.label_column"
    assert "no column 'y'; columns: a, b" in info.value.errors[0].reason


def test_csv_text_features_are_one_hot_encoded_in_sorted_order(tmp_path) -> None:
    rows = "".join(f"{i},{['red', 'blue', 'green'][i % 3]},{i % 2}\n" for i in range(30))
    (tmp_path / "d.csv").write_text("a,color,label\n" + rows)
    data = load_dataset(DatasetSpec(path=str(tmp_path / "d.csv"), scaling="none", test_split=0))
    assert data.input_shape == (4,)  # a, color=blue, color=green, color=red
    x = np.concatenate([data.x_train, data.x_val])
    assert sorted(map(tuple, np.unique(x[:, 1:], axis=0).tolist())) == [
        (0, 0, 1),
        (0, 1, 0),
        (1, 0, 0),
    ]


def test_csv_text_feature_with_too_many_values_is_refused(tmp_path) -> None:
    rows = "".join(f"{i},user{i},{i % 2}\n" for i in range(150))
    (tmp_path / "d.csv").write_text("a,user,label\n" + rows)
    reason = rejected(DatasetSpec(path=str(tmp_path / "d.csv")))
    assert "text column 'user' has 150 distinct values; at most 100" in reason


def test_csv_with_an_empty_cell_is_refused_naming_column_and_line(tmp_path) -> None:
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n1,,0\n3,4,1\n")
    reason = rejected(DatasetSpec(path=str(tmp_path / "d.csv")))
    assert "column 'b' has 1 missing or non-finite" in reason
    assert "first on line 3" in reason
