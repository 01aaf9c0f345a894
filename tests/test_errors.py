"""The exception classes: names the Rust core imports, and the builtins each also subclasses."""

from __future__ import annotations

import modelhost
import pytest
from modelhost import errors


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ModelNotFoundError, LookupError),
        (errors.ModelKindError, LookupError),
        (errors.NoModelLoadedError, LookupError),
        (errors.InstanceExistsError, ValueError),
        (errors.ModelUnloadedError, RuntimeError),
        (errors.ModelLoadError, ValueError),
        (errors.InvalidConfigError, ValueError),
        (errors.NotSupportedError, ValueError),
        (errors.InsufficientMemoryError, MemoryError),
        (errors.LoadCancelledError, RuntimeError),
        (errors.ContextLengthExceededError, ValueError),
        (errors.ClientClosedError, RuntimeError),
    ],
)
def test_each_error_is_a_modelhost_error_and_its_builtin(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, errors.ModelHostError)
    assert issubclass(cls, builtin)
    with pytest.raises(builtin, match="boom"):
        raise cls("boom")
    assert getattr(modelhost, cls.__name__) is cls


def test_specific_relations() -> None:
    assert issubclass(errors.NotSupportedError, errors.InvalidConfigError)
    assert issubclass(errors.ModelKindError, errors.ModelNotFoundError)
    assert issubclass(errors.ClientClosedError, errors.ModelUnloadedError)
    assert issubclass(errors.ModelHostError, Exception)
    assert not issubclass(errors.ModelHostError, (ValueError, LookupError, RuntimeError))


def test_placement_warning_is_a_user_warning() -> None:
    assert issubclass(modelhost.PlacementWarning, UserWarning)
    with pytest.warns(modelhost.PlacementWarning):
        import warnings

        warnings.warn("no gpu", modelhost.PlacementWarning, stacklevel=1)


def test_error_names_are_importable_by_the_core() -> None:
    # The Rust bindings import these by name from modelhost.errors.
    for name in errors.__all__:
        assert hasattr(errors, name)
