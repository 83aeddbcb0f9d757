"""The README's config reference lists every key the schema accepts (so docs cannot drift from the code)."""

from megarank.config.load import valid_keys
from megarank.config.schema import ExperimentConfig
from tests.helpers import REPO


def test_every_config_key_is_documented():
    readme = (REPO / "README.md").read_text()
    missing = [k for k in valid_keys(ExperimentConfig) if f"`{k}`" not in readme]
    assert not missing, f"run tools/config_reference.py --write README.md (missing: {missing})"
