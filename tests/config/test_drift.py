"""Config drift on resume (sdclr.config.drift): checkpoints saved before the method, loss,
BCL and temperature keys existed still resume, and the monitor is never drift."""

from __future__ import annotations

from sdclr.config.compose import compose_config
from sdclr.config.drift import config_differences


def test_older_checkpoints_without_the_new_keys_still_resume():
    from sdclr.config.derived import to_container

    current = to_container(compose_config([]))
    saved = {k: v for k, v in current.items() if k not in ("method", "loss", "boost", "bcl")}
    saved.pop("temperature")
    assert config_differences(saved, current) == []
    moco = to_container(compose_config(["method=moco"]))
    assert "method.name: '<absent>' -> 'moco'" in config_differences(saved, moco)
    # the monitor never changes what is trained
    quiet = to_container(compose_config(["monitor.knn_every=0", "monitor.diagnostics=false"]))
    assert config_differences(current, quiet) == []


def test_the_knn_classifiers_settings_are_drift_but_not_its_batch_size():
    from sdclr.config.derived import to_container

    current = to_container(compose_config([]))
    saved = {k: v for k, v in current.items() if k != "knn"}  # from before the knn stage
    assert config_differences(saved, current) == []
    assert config_differences(current, to_container(compose_config(["knn.batch_size=64"]))) == []
    assert config_differences(current, to_container(compose_config(["stage.knn=true"]))) == []
    assert config_differences(current, to_container(compose_config(["knn.k=20"]))) == [
        "knn.k: None -> 20"
    ]


def test_the_maps_settings_are_drift_but_not_its_batch_size():
    from sdclr.config.derived import to_container

    current = to_container(compose_config([]))
    saved = {k: v for k, v in current.items() if k != "embed"}  # from before stage=embed
    assert config_differences(saved, current) == []
    assert config_differences(current, to_container(compose_config(["embed.batch_size=64"]))) == []
    assert config_differences(current, to_container(compose_config(["embed.method=pca"]))) == [
        "embed.method: 'tsne' -> 'pca'"
    ]
