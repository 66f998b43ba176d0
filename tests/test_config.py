from dataclasses import dataclass, field

import pytest

from vitsplit_vlm.config import load_config, parse_overrides


@dataclass
class Optim:
    learning_rate: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


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
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(Run, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_config(Run, tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match=r"^Override 'name\.x': 'name' is a value, not a section\.$"):
        parse_overrides(["name=1", "name.x=1"])
