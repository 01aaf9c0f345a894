"""The exception classes: names the Rust core imports, and the builtins each also subclasses."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import modelhost
import pytest
from helpers import EMB_KEY, LLM_KEY
from modelhost import _core, errors


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
        (errors.InvalidInputError, ValueError),
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


def test_a_token_id_outside_the_vocabulary_is_invalid_input_not_config(llm: modelhost.LLM) -> None:
    with pytest.raises(errors.InvalidInputError, match="49152") as info:
        llm.evaluate([1, 49152])
    assert not isinstance(info.value, errors.InvalidConfigError)
    assert llm.evaluate([1, 2]).shape == (2, 49152)  # the instance is fine


def test_options_that_do_nothing_on_an_embedding_model_are_not_supported(models_dir: Path) -> None:
    """The core refuses them for every caller (the Python config classes, the server, the bindings), whatever else is
    set: NotSupportedError, as the README says, not a generic config error and not a silent no-op."""
    host = _core.Host(str(models_dir))
    try:
        for config in (
            {"keep_model_in_memory": True},
            {"rope_frequency_base": 10000.0},
            {"rope_frequency_scale": 0.5},
            {"rope_frequency_base": 10000.0, "gpu_ratio": 1.0},
        ):
            with pytest.raises(errors.NotSupportedError, match="embedding"):
                host.estimate("embedding", EMB_KEY, config)
        # On an LLM they are real options.
        assert host.estimate("llm", LLM_KEY, {"keep_model_in_memory": True, "rope_frequency_base": 10000.0})
    finally:
        host.close()
    with modelhost.Client(models_dir) as client, pytest.raises(errors.NotSupportedError, match="keepModelInMemory"):
        client.embedding.model(EMB_KEY, config={"keepModelInMemory": True})


SPAWN_FAILS = """
import resource, sys
import modelhost._core as core

def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")

soft, hard = resource.getrlimit(resource.RLIMIT_AS)
# Room for small allocations, none for a thread's stack: starting the host's TTL thread fails.
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (1 << 20), hard))
try:
    core.Host(sys.argv[1])
    outcome = "started"
except BaseException as e:
    outcome = f"{type(e).__module__}.{type(e).__qualname__}|{isinstance(e, OSError)}|{e}"
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
print(outcome)
"""


def test_a_thread_that_cannot_start_is_an_os_error_not_a_config_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SPAWN_FAILS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, is_os_error, message = proc.stdout.strip().split("|", 2)
    assert is_os_error == "True" and "thread" in message, proc.stdout
    assert name != "modelhost.errors.InvalidConfigError"
