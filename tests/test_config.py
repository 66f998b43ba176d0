from dataclasses import dataclass, field

import pytest

from vitsplit_vlm.config import ConfigError, load_config, parse_overrides


@dataclass
class Optim:
    learning_rate: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ConfigError(f"{self.learning_rate}: must be > 0.", key="learning_rate")


@dataclass
class Run:
    name: str = "demo"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)
    extra: Optim | None = None
    warmup: float | None = None


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: a\noptim:\n  learning_rate: 0.1\n")
    cfg = load_config(Run, path, ["optim.betas=[0.5, 0.6]", "steps=3", "extra.learning_rate=2e-5"])
    assert cfg == Run(name="a", steps=3, optim=Optim(0.1, [0.5, 0.6]), extra=Optim(learning_rate=2e-5))


def test_optional_floats_accept_yaml_exponent_text():
    assert load_config(Run, None, ["warmup=2e-5"]).warmup == 2e-5
    assert load_config(Run, None, ["warmup=null"]).warmup is None
    with pytest.raises(ValueError, match=r"^config\.warmup: expected a number, got 'soon'\.$"):
        load_config(Run, None, ["warmup=soon"])


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(ValueError) as err:
        load_config(Run, path)
    assert str(err.value) == f"{path}.optim: unknown key(s) lr. Known keys: betas, learning_rate."
    with pytest.raises(ValueError, match=r"^config: unknown key\(s\) stepz\. Known keys: extra, name, optim, steps, warmup\.$"):
        load_config(Run, None, ["stepz=1"])


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"^config\.steps: expected int, got 'ten'\.$"):
        load_config(Run, None, ["steps=ten"])
    with pytest.raises(ValueError, match=r"^config\.optim\.learning_rate: expected a number, got 'fast'\.$"):
        load_config(Run, None, ["optim.learning_rate=fast"])
    with pytest.raises(ValueError, match="^Bad override 'steps': expected key=value"):
        parse_overrides(["steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_config(Run, tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match=r"^Override 'name\.x': 'name' is a value, not a section\.$"):
        parse_overrides(["name=1", "name.x=1"])


def test_a_section_replaced_by_a_scalar_or_a_list_by_a_string_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^config\.optim: is a section of options, got 5; set its keys, e\.g\. optim\.<option>=\.\.\.$"):
        load_config(Run, None, ["optim=5"])
    with pytest.raises(ConfigError, match=r"^config\.extra: is a section of options, got 'x'"):
        load_config(Run, None, ["extra=x"])
    with pytest.raises(ConfigError, match=r"^config\.optim: is a section of options, got None"):
        load_config(Run, None, ["optim=null"])  # a required section cannot be dropped
    assert load_config(Run, None, ["extra=null"]).extra is None  # an optional one can
    with pytest.raises(ConfigError, match=r"^config\.optim\.betas: expected a list, e\.g\. \[a, b\], got 0\.9\.$"):
        load_config(Run, None, ["optim.betas=0.9"])


def test_a_sections_own_checks_run_at_load_and_name_the_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  learning_rate: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(Run, path)
    assert str(err.value) == f"{path}.optim.learning_rate: 0.0: must be > 0."
