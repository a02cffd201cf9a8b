import pytest
from pydantic import ValidationError

from svdpipe.config import available_profiles, load_config, parse_override


def test_profiles_load_and_differ():
    assert {"tiny", "svd"} <= set(available_profiles())
    tiny, svd = load_config("tiny", environ={}), load_config("svd", environ={})
    assert tiny.profile == "tiny" and svd.profile == "svd"
    assert svd.ingest.workers > tiny.ingest.workers


def test_precedence_yaml_then_environment_then_cli():
    env = {"SVDPIPE__INGEST__WORKERS": "5", "SVDPIPE__INGEST__DOWNLOAD_RETRIES": "7"}
    cfg = load_config("tiny", overrides=["ingest.workers=9"], environ=env)
    assert cfg.ingest.workers == 9  # CLI beats the environment
    assert cfg.ingest.download_retries == 7  # environment beats the YAML and defaults


def test_profile_and_data_root_from_environment():
    cfg = load_config(environ={"SVDPIPE_PROFILE": "svd", "SVDPIPE_DATA_ROOT": "s3://b/p"})
    assert cfg.profile == "svd" and cfg.data_root == "s3://b/p"
    assert load_config("tiny", data_root="/x", environ={"SVDPIPE_DATA_ROOT": "/y"}).data_root == "/x"


def test_override_values_keep_their_types():
    assert parse_override("ingest.ignore=['*.txt', '*.json']") == ("ingest.ignore", ["*.txt", "*.json"])
    assert parse_override("seed=3") == ("seed", 3)
    cfg = load_config("tiny", overrides=["ingest.ignore=['*.txt']"], environ={})
    assert cfg.ingest.ignore == ("*.txt",)


@pytest.mark.parametrize("bad", ["ingest.wokers=3", "ingest.workers=0", "ingest.workers=many", "nonsense"])
def test_bad_overrides_are_refused(bad):
    with pytest.raises((ValidationError, ValueError)):
        load_config("tiny", overrides=[bad], environ={})


def test_unknown_profile_names_the_available_ones():
    with pytest.raises(ValueError, match="tiny"):
        load_config("nope", environ={})


def test_flat_view_drops_secrets():
    cfg = load_config("tiny", overrides=["mlflow.tracking_uri=http://u:pw@host"], environ={})
    flat = cfg.flat()
    assert flat["ingest.workers"] == str(cfg.ingest.workers)
    assert flat["profile"] == "tiny"
    assert all("secret" not in k and "password" not in k for k in flat)


def test_params_file_sits_between_profile_and_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  workers: 3\n  download_retries: 1\nsample_corpus:\n  seed: 5\n")
    cfg = load_config("tiny", params_file=params, overrides=["ingest.download_retries=4"], environ={})
    assert cfg.ingest.workers == 3  # from the params file (DVC stage settings are ignored)
    assert cfg.ingest.download_retries == 4  # --set wins
