"""The flash-attn check before Ray starts: a model verl would load with ``flash_attention_2`` (its default when
``actor_rollout_ref.model.override_config.attn_implementation`` is unset) needs an importable ``flash_attn``, or the run
stops naming the sdpa overrides. flash-attn is not installed on the CPU machines this suite runs on, so the failing
case is real; importability is simulated for the passing one."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from recipe.acpo import main_acpo, preflight
from recipe.acpo.preflight import (
    ATTN_IMPLEMENTATION_KEY,
    REMOVE_PADDING_KEY,
    SetupError,
    attention_implementation,
    check_attention_backend,
)

CONFIG_DIR = Path(main_acpo.__file__).resolve().parent / "config"


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture
def no_flash_attn(monkeypatch: pytest.MonkeyPatch) -> None:
    """flash_attn not importable, whatever this machine has."""
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import_module raises ImportError for a None entry


@pytest.fixture
def flash_attn_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))


def test_unset_attention_is_verls_default_flash_attention_2() -> None:
    assert attention_implementation(_compose("acpo_stage1", [])) == "flash_attention_2"
    assert attention_implementation(_compose("acpo_stage1", [f"+{ATTN_IMPLEMENTATION_KEY}=sdpa"])) == "sdpa"
    assert attention_implementation(_compose("acpo_cpu", [])) == "sdpa"


def test_the_real_import_fails_here_without_flash_attn() -> None:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        assert preflight.flash_attn_import_error() is not None
    else:  # pragma: no cover - a machine with flash-attn
        pytest.skip("flash_attn is installed here")


def test_flash_attention_without_flash_attn_stops_naming_the_sdpa_overrides(no_flash_attn: None) -> None:
    with pytest.raises(SetupError) as unset:
        check_attention_backend(_compose("acpo_stage1", []))
    message = str(unset.value)
    assert f"{ATTN_IMPLEMENTATION_KEY}=flash_attention_2 (verl's default: the key is unset)" in message
    assert f"+{ATTN_IMPLEMENTATION_KEY}=sdpa {REMOVE_PADDING_KEY}=False" in message
    # Set explicitly: the key exists, so the fix replaces it (Hydra refuses "+key" for a key that exists).
    with pytest.raises(SetupError) as explicit:
        check_attention_backend(_compose("acpo_stage1", [f"+{ATTN_IMPLEMENTATION_KEY}=flash_attention_2"]))
    message = str(explicit.value)
    assert "verl's default" not in message
    assert f" {ATTN_IMPLEMENTATION_KEY}=sdpa {REMOVE_PADDING_KEY}=False" in message


def test_the_overrides_it_names_compose_and_pass(no_flash_attn: None) -> None:
    config = _compose("acpo_stage1", [])
    with pytest.raises(SetupError):
        check_attention_backend(config)
    fixed = _compose("acpo_stage1", preflight.sdpa_overrides(config))
    check_attention_backend(fixed)
    assert OmegaConf.select(fixed, REMOVE_PADDING_KEY) is False


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_other_attention_needs_no_flash_attn(no_flash_attn: None, implementation: str) -> None:
    check_attention_backend(_compose("acpo_stage1", [f"+{ATTN_IMPLEMENTATION_KEY}={implementation}"]))


def test_flash_attention_passes_when_flash_attn_imports(flash_attn_importable: None) -> None:
    assert preflight.flash_attn_import_error() is None
    check_attention_backend(_compose("acpo_stage1", []))


def test_prepare_stops_a_gpu_run_before_ray_and_the_cpu_preset_is_unaffected(
    no_flash_attn: None, tiny_model_dir: Path, arithmetic_parquets: tuple[Path, Path]
) -> None:
    train, val = arithmetic_parquets
    files = [f"actor_rollout_ref.model.path={tiny_model_dir}", f"data.train_files={train}", f"data.val_files={val}"]
    with pytest.raises(SetupError, match=rf"\+{ATTN_IMPLEMENTATION_KEY}=sdpa"):
        main_acpo.prepare(_compose("acpo_stage1", files))
    # The CPU preset loads with sdpa: the check passes without flash-attn (the later checks decide the rest).
    check_attention_backend(_compose("acpo_cpu", files))
