"""Config schema: defaults, YAML files, ``--set`` overrides, type checks and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dmlkit.config import (
    Config,
    OptimConfig,
    PeerConfig,
    apply_override,
    load_config,
    save_config,
)
from dmlkit.engine.names import check_names
from dmlkit.errors import ConfigError, UserError
from dmlkit.models import list_models

from helpers import QUIET

CONFIG_DIR = Path(__file__).parents[1] / "configs"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# defaults and precedence


def test_defaults_load_and_equal_dataclass_defaults():
    cfg = load_config(None, [])
    assert isinstance(cfg, Config)
    assert cfg.to_dict() == Config().to_dict()
    assert len(cfg.peers) == 2
    assert all(isinstance(p, PeerConfig) for p in cfg.peers)
    assert cfg.data.name == "digits"
    assert cfg.method.name == "dml"
    # load_config(None) with no overrides argument at all is the same thing
    assert load_config().to_dict() == cfg.to_dict()


def test_precedence_defaults_yaml_set(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"optim": {"lr": 0.2}, "train": {"epochs": 7}})
    defaults = Config()

    from_file = load_config(path, [])
    assert from_file.optim.lr == 0.2
    assert from_file.train.epochs == 7

    cfg = load_config(path, ["train.epochs=9"])
    assert cfg.train.epochs == 9  # --set beats the file
    assert cfg.optim.lr == 0.2  # the file beats the defaults
    # untouched keys keep their defaults, also siblings of keys the file set
    assert cfg.optim.momentum == defaults.optim.momentum
    assert cfg.optim.schedule == defaults.optim.schedule
    assert cfg.train.eval_every == defaults.train.eval_every
    assert cfg.data == defaults.data
    assert cfg.method == defaults.method
    assert cfg.peers == defaults.peers
    assert cfg.seed == defaults.seed


def test_later_set_wins_over_earlier_set():
    cfg = load_config(None, ["train.epochs=3", "train.epochs=4"])
    assert cfg.train.epochs == 4


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path).to_dict() == Config().to_dict()


def test_missing_or_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top_list = tmp_path / "list.yaml"
    top_list.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top_list)


# ---------------------------------------------------------------------------------------------
# --set parsing


def test_set_parses_yaml_scalars_and_lists():
    cfg = load_config(
        None,
        [
            "train.epochs=5",
            "optim.lr=0.25",
            *QUIET,
            "optim.milestones=[10, 20]",
            "train.iterations=123",
            "data.train_size=null",
            "method.temperature=3",
        ],
    )
    assert cfg.train.epochs == 5 and type(cfg.train.epochs) is int
    assert cfg.optim.lr == 0.25
    assert cfg.train.progress is False
    assert cfg.optim.milestones == [10.0, 20.0]
    assert all(type(m) is float for m in cfg.optim.milestones)
    assert cfg.train.iterations == 123
    assert cfg.data.train_size is None
    assert cfg.method.temperature == 3.0 and type(cfg.method.temperature) is float

    cfg = load_config(None, ["data.train_size=50", "train.iterations=null"])
    assert cfg.data.train_size == 50
    assert cfg.train.iterations is None


def test_set_null_resets_a_value_set_by_the_file(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"train": {"iterations": 100}})
    assert load_config(path).train.iterations == 100
    assert load_config(path, ["train.iterations=null"]).train.iterations is None


def test_set_list_index_on_default_peers():
    cfg = load_config(None, ["peers.1.arch=mlp"])
    assert [p.arch for p in cfg.peers] == [Config().peers[0].arch, "mlp"]
    assert cfg.peer_name(1) == "peer1_mlp"


def test_set_negative_list_index():
    cfg = load_config(None, ["peers.-1.arch=mlp"])
    assert cfg.peers[-1].arch == "mlp"
    assert cfg.peers[0].arch == Config().peers[0].arch


@pytest.mark.parametrize("key", ["peers.2.arch=mlp", "peers.x.arch=mlp", "peers.-3.arch=mlp"])
def test_set_bad_list_index(key):
    with pytest.raises(ConfigError, match="index"):
        load_config(None, [key])


@pytest.mark.parametrize("assignment", ["train.epochs", "train..epochs=3", ".epochs=3"])
def test_set_malformed_assignment(assignment):
    with pytest.raises(ConfigError):
        load_config(None, [assignment])


def test_set_does_not_mutate_its_input():
    data = {"peers": ["mlp", {"arch": "small_cnn"}], "optim": {"lr": 0.3}}
    snapshot = yaml.safe_dump(data)
    out = apply_override(data, "peers.0.optim.lr=0.01")
    out = apply_override(out, "optim.lr=0.5")
    out = apply_override(out, "peers.1.arch=mlp")
    assert yaml.safe_dump(data) == snapshot
    assert out["peers"][0] == {"arch": "mlp", "optim": {"lr": 0.01}}
    assert out["peers"][1] == {"arch": "mlp"}
    assert out["optim"] == {"lr": 0.5}


def test_peer_shorthand_strings_in_yaml(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"peers": ["small_cnn", "mlp"]})
    cfg = load_config(path)
    assert len(cfg.peers) == 2
    assert all(isinstance(p, PeerConfig) for p in cfg.peers)
    assert [p.arch for p in cfg.peers] == ["small_cnn", "mlp"]
    assert cfg.peers[1] == PeerConfig(arch="mlp")
    # an index into a shorthand item turns it into a mapping
    cfg = load_config(path, ["peers.1.kwargs.hidden=[32, 16]", "peers.0.name=left"])
    assert cfg.peers[1].arch == "mlp"
    assert cfg.peers[1].kwargs == {"hidden": [32, 16]}
    assert cfg.peers[0].arch == "small_cnn"
    assert cfg.peer_name(0) == "left"


def test_set_whole_peer_list():
    cfg = load_config(None, ["peers=[mlp,mlp,mlp]"])
    assert len(cfg.peers) == 3
    assert [p.arch for p in cfg.peers] == ["mlp"] * 3
    assert [cfg.peer_name(i) for i in range(3)] == ["peer0_mlp", "peer1_mlp", "peer2_mlp"]


def test_per_peer_optim_override():
    cfg = load_config(None, ["optim.lr=0.3", "peers.0.optim.lr=0.01", "peers.0.optim.name=adam"])
    p0, p1 = cfg.peer_optim(0), cfg.peer_optim(1)
    assert isinstance(p0, OptimConfig)
    assert p0.lr == 0.01
    assert p0.name == "adam"
    assert p1.lr == 0.3
    assert p1.name == cfg.optim.name == "sgd"
    # the global optim itself is not changed by a peer override
    assert cfg.optim.lr == 0.3
    # other fields of peer 0 come from the global optim
    assert p0.momentum == cfg.optim.momentum
    assert p0.weight_decay == cfg.optim.weight_decay


def test_per_peer_optim_is_type_checked():
    with pytest.raises(ConfigError, match=r"peers\.0\.optim\.lr"):
        load_config(None, ["peers.0.optim.lr=abc"])
    with pytest.raises(ConfigError, match=r"peers\.1\.optim\.lrr.*peers\.1\.optim\.lr'"):
        load_config(None, ["peers.1.optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"peers\.0\.optim\.lr must be > 0"):
        load_config(None, ["peers.0.optim.lr=-0.1"])


# ---------------------------------------------------------------------------------------------
# unknown keys and types


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["method.temprature=2"])
    msg = str(info.value)
    assert "method.temprature" in msg
    assert "method.temperature" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"optim": {"momentun": 0.5}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "optim.momentun" in str(info.value)
    assert "optim.momentum" in str(info.value)


def test_unknown_top_level_key_lists_valid_keys():
    # 'epochs' lives under 'train'; today the message lists the top-level keys (no suggestion
    # of 'train.epochs').
    with pytest.raises(ConfigError) as info:
        load_config(None, ["epochs=3"])
    msg = str(info.value)
    assert "'epochs'" in msg
    for key in ("train", "optim", "data", "method", "peers", "seed"):
        assert key in msg


def test_unknown_peer_key():
    with pytest.raises(ConfigError, match=r"peers\.0\.achr.*peers\.0\.arch"):
        load_config(None, ["peers.0.achr=mlp"])


@pytest.mark.parametrize(
    "assignment, key",
    [
        ("train.epochs=ten", "train.epochs"),
        ("train.epochs=true", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("optim.lr=abc", "optim.lr"),
        ("optim.lr=true", "optim.lr"),
        ("train.progress=1", "train.progress"),
        ("data.batch_size=[1]", "data.batch_size"),
        ("optim.milestones=5", "optim.milestones"),
        ("optim.milestones=[1, x]", "optim.milestones.1"),
        ("optim.schedule=linear", "optim.schedule"),
        ("data.root=5", "data.root"),
        ("method=dml", "method"),
        ("peers.0.kwargs=3", "peers.0.kwargs"),
    ],
)
def test_wrong_types_rejected(assignment, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [assignment])
    assert key in str(info.value)


def test_literal_error_lists_choices():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optim.schedule=linear"])
    for choice in ("constant", "step", "multistep", "cosine"):
        assert choice in str(info.value)


def test_int_accepted_for_float():
    cfg = load_config(None, ["optim.lr=1", "method.temperature=2"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.method.temperature == 2.0 and isinstance(cfg.method.temperature, float)


def test_scientific_notation_float():
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)


def test_scientific_notation_with_dot_works():
    assert load_config(None, ["optim.lr=1.0e-3"]).optim.lr == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------------
# value validation


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["peers=[]"], "peers"),
        (["optim.lr=-0.1"], "optim.lr"),
        (["optim.lr=0"], "optim.lr"),
        (["optim.momentum=1.0"], "optim.momentum"),
        (["optim.weight_decay=-1"], "optim.weight_decay"),
        (["optim.betas=[0.9]"], "optim.betas"),
        (["optim.schedule=multistep"], "optim.milestones"),
        (["data.labelled_fraction=0"], "data.labelled_fraction"),
        (["data.labelled_fraction=1.5"], "data.labelled_fraction"),
        (["data.val_fraction=1"], "data.val_fraction"),
        (["data.test_fraction=0"], "data.test_fraction"),
        (["data.train_size=0"], "data.train_size"),
        (["data.batch_size=0"], "data.batch_size"),
        (["data.crop_padding=-1"], "data.crop_padding"),
        (["method.temperature=0"], "method.temperature"),
        (["method.alpha=1.5"], "method.alpha"),
        (["method.name=kd"], "method.teacher"),
        (["train.epochs=0"], "train.epochs"),
        (["train.device=tpu"], "train.device"),
    ],
)
def test_validation_rejects(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert key in str(info.value)


# Registered names are checked where the registries are (dmlkit.engine.names), before the
# trainer builds anything; the config package itself is a leaf that cannot see them.
@pytest.mark.parametrize(
    "overrides, key",
    [
        (["peers.0.arch=resnet9000"], "arch"),
        (["method.name=mutual"], "method.name"),
        (["data.name=cifar"], "data.name"),
    ],
)
def test_unregistered_names_rejected(overrides, key):
    with pytest.raises(ConfigError) as info:
        check_names(load_config(None, overrides))
    assert key in str(info.value)


def test_config_error_is_a_user_error():
    with pytest.raises(UserError):
        load_config(None, ["peers=[]"])


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        check_names(load_config(None, ["peers.0.arch=resnet9000"]))
    for name in list_models():
        assert name in str(info.value)


def test_boundary_values_accepted():
    cfg = load_config(
        None,
        [
            "data.labelled_fraction=1",
            "data.val_fraction=0",
            "method.alpha=0",
            "method.mimicry_weight=0",
            "optim.momentum=0",
            "peers=[mlp]",
        ],
    )
    assert cfg.data.labelled_fraction == 1.0
    assert len(cfg.peers) == 1
    cfg = load_config(None, ["method.name=kd", "method.teacher=runs/teacher"])
    assert cfg.method.teacher == "runs/teacher"


def test_duplicate_peer_names_rejected():
    with pytest.raises(ConfigError, match="unique") as info:
        load_config(None, ["peers.0.name=twin", "peers.1.name=twin"])
    assert "twin" in str(info.value)
    # an explicit name that collides with another peer's default name
    with pytest.raises(ConfigError, match="unique"):
        load_config(None, ["peers.0.name=peer1_small_cnn", "peers.1.arch=small_cnn"])
    # distinct names are fine
    cfg = load_config(None, ["peers.0.name=a", "peers.1.name=b"])
    assert [cfg.peer_name(0), cfg.peer_name(1)] == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# peer seeds


def test_peer_seed_differs_per_peer_and_per_run_seed():
    cfg = load_config(None, ["peers=[mlp,mlp,mlp,mlp]"])
    seeds = [cfg.peer_seed(i) for i in range(4)]
    assert len(set(seeds)) == 4

    other = load_config(None, ["peers=[mlp,mlp,mlp,mlp]", "seed=1"])
    assert all(other.peer_seed(i) != cfg.peer_seed(i) for i in range(4))

    # no collisions over a grid of run seeds and peer indices
    every = set()
    for run_seed in range(10):
        c = Config(seed=run_seed, peers=[PeerConfig(arch="mlp") for _ in range(8)])
        every.update(c.peer_seed(i) for i in range(8))
    assert len(every) == 80


def test_explicit_peer_seed_wins():
    cfg = load_config(None, ["peers.1.seed=1234", "seed=5"])
    assert cfg.peer_seed(1) == 1234
    assert cfg.peer_seed(0) != 1234
    assert load_config(None, ["peers.1.seed=1234", "seed=6"]).peer_seed(1) == 1234


# ---------------------------------------------------------------------------------------------
# shipped configs and round trips


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.yaml"))


def test_configs_folder_has_yaml_files():
    assert shipped_configs(), f"no *.yaml under {CONFIG_DIR}"


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert len(cfg.peers) >= 1


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(
        None,
        [
            "seed=3",
            "peers=[small_cnn, mlp, mlp]",
            "peers.1.kwargs.hidden=[32, 16]",
            "peers.2.name=third",
            "peers.2.seed=77",
            "peers.0.optim.lr=0.01",
            "optim.schedule=multistep",
            "optim.milestones=[5, 8]",
            "method.name=dml_e",
            "method.temperature=2.5",
            "data.labelled_fraction=0.5",
            "data.train_size=200",
            "train.iterations=40",
        ],
    )
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again == cfg
    # and the defaults too
    save_config(Config(), path)
    assert load_config(path).to_dict() == Config().to_dict()
