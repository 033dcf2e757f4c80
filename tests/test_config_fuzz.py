"""Property tests over the config loader: any YAML file, any mapping of known keys to any values,
any override string gives a RunConfig or a ConfigError that names the problem; nothing else."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.config import RunConfig, dump_config, load_config, schema, section_fields
from tunesmith.errors import ConfigError

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["auto", "none", "epoch", "steps", "skip", "1e-3", "-1", ""]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=3), max_leaves=6)
SECTIONS = section_fields(schema())
section_keys = {name: sorted(section.model_fields) for name, section in SECTIONS.items()}
top_keys = sorted(k for k in schema().model_fields if k not in SECTIONS)


@st.composite
def configs(draw):
    """Mappings whose keys are mostly real (so values reach the validators), sometimes misspelled."""
    raw = {}
    for key in draw(st.lists(st.sampled_from(top_keys), max_size=3)):
        raw[key] = draw(values)
    for section in draw(st.lists(st.sampled_from(sorted(section_keys)), max_size=3)):
        keys = draw(st.lists(st.sampled_from(section_keys[section]) | st.text(min_size=1, max_size=8), max_size=4))
        raw[section] = {key: draw(values) for key in keys}
    return raw


def config_or_error(load) -> RunConfig | None:
    try:
        return load()
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return None


@FUZZ
@given(raw=configs())
def test_any_mapping_gives_a_config_or_a_config_error(raw):
    config = config_or_error(lambda: load_config(raw))
    if config is not None:
        assert isinstance(config, RunConfig)
        assert math.isfinite(config.training.learning_rate) and config.training.per_device_train_batch_size >= 1


@FUZZ
@given(text=st.text(max_size=200))
def test_any_yaml_file_gives_a_config_or_a_config_error(text):
    path = Path(tempfile.mkdtemp(prefix="tunesmith-fuzz-")) / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    config_or_error(lambda: load_config(path))


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_config_file(data):
    path = Path(tempfile.mkdtemp(prefix="tunesmith-fuzz-")) / "config.yaml"
    path.write_bytes(data)
    config_or_error(lambda: load_config(path))


@FUZZ
@given(overrides=st.lists(st.one_of(
    st.text(max_size=30),
    st.tuples(st.sampled_from([f"{s}.{k}" for s, keys in section_keys.items() for k in keys] + top_keys),
              st.text(max_size=12)).map("=".join)), max_size=3))
def test_any_overrides_give_a_config_or_a_config_error(overrides):
    config_or_error(lambda: load_config(None, overrides))


@FUZZ
@given(raw=configs())
def test_a_valid_config_round_trips_through_its_yaml(raw):
    config = config_or_error(lambda: load_config(raw))
    if config is None:
        return
    path = Path(tempfile.mkdtemp(prefix="tunesmith-fuzz-")) / "config.yaml"
    dump_config(config, path)
    assert load_config(path) == config
