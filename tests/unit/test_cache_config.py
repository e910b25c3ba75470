"""``[cache]`` of cinesynth.toml and ``$CINESYNTH_CACHE``: which store a command opens."""


import pytest

from cinesynth_batch.cache.open import cache_settings, open_store
from cinesynth_batch.cache.remote import parse_entry
from cinesynth_batch.cache.store import CacheStore
from cinesynth_batch.config import ConfigError, ProjectConfig


def test_cache_section_is_read_and_checked(tmp_path):
    cfg = ProjectConfig.from_dict(tmp_path, {"cache": {"url": "s3://b/p", "endpoint_url": "http://h:9000",
                                                       "local": "c", "lease_seconds": 5}})
    assert (cfg.cache.url, cfg.cache.endpoint_url, cfg.cache.lease_seconds) == ("s3://b/p", "http://h:9000", 5.0)
    assert cfg.cache.local == (tmp_path / "c").resolve()
    for bad, text in [({"url": "/tmp/x"}, "is not an s3:// URL"),
                      ({"endpoint_url": "ftp://h"}, "is not an http(s) URL"),
                      ({"lease_seconds": 0}, "lease_seconds must be a positive number"),
                      ({"secret": "x"}, "unknown key(s) secret")]:
        with pytest.raises(ConfigError) as exc:
            ProjectConfig.from_dict(tmp_path, {"cache": bad})
        assert text in exc.value.message


def test_environment_names_the_remote_or_a_local_store(tmp_path):
    base = ProjectConfig.from_dict(tmp_path, {"cache": {"url": "s3://b/p", "local": "c"}}).cache
    assert cache_settings(base, {"CINESYNTH_CACHE": "s3://other/q"}).url == "s3://other/q"
    local = cache_settings(base, {"CINESYNTH_CACHE": str(tmp_path / "l")})
    assert local.url is None and local.local == tmp_path / "l"
    store = open_store(local, tmp_path / "default")
    assert type(store) is CacheStore and store.root == tmp_path / "l"
    assert open_store(cache_settings(base, {}), None).remote.root == "b/p"


@pytest.mark.parametrize("raw", [
    b'{"digest": "../../etc", "ext": ".png", "size": 1}',
    b'{"digest": "' + b"a" * 64 + b'", "ext": "/../x", "size": 1}',
    b'{"digest": "' + b"a" * 64 + b'", "ext": ".png", "size": -1}',
    b'{"digest": "' + b"a" * 64 + b'", "ext": ".png"}',
    b"not json",
])
def test_a_remote_entry_that_could_name_another_file_is_refused(raw):
    assert parse_entry("k" * 64, raw) is None


def test_a_well_formed_remote_entry_is_read():
    entry = parse_entry("k" * 64, b'{"digest": "' + b"a" * 64 + b'", "ext": ".mp4", "size": 3, "node": "a.video"}')
    assert entry is not None and (entry.ext, entry.size, entry.node) == (".mp4", 3, "a.video")
