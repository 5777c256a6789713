"""The structure docs/design.md promises: layering without import circles, one home per convention,
registries that refuse a taken name, typed specs whose defaults are the schema's."""

import ast
import dataclasses
import re

import pytest

from conftest import REPO

PKG = REPO / "medmix"


def _module_graph() -> dict[str, set[str]]:
    """medmix module -> the medmix modules it imports, at the top or inside functions."""
    mods = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.startswith("medmix")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("medmix"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in mods else resolve(node.module))
        graph[name] = deps - {name, "medmix", ""}
    return graph


def test_no_import_circle_in_medmix():
    graph = _module_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(w):] + [w]))
            if w not in state:
                visit(w)
        path.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)


def test_the_detector_finds_a_circle(tmp_path, monkeypatch):
    """The walk above must fail on a real circle (a function-level import closing it)."""
    graph = _module_graph()
    graph["medmix.io"] = graph["medmix.io"] | {"medmix.run"}      # io -> run -> ... -> io
    monkeypatch.setattr(__import__(__name__), "_module_graph", lambda: graph)
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle_in_medmix()


def test_layering_reads_bottom_up():
    """Lower layers never import higher ones (docs/design.md "Layering")."""
    layer = {"medmix.io": 0, "medmix.methods": 0, "medmix.metrics": 0, "medmix.masks": 1, "medmix.data": 1,
             "medmix.config": 2, "medmix.tasks": 2, "medmix.encoders": 3, "medmix.embed": 4, "medmix.inputs": 4,
             "medmix.model": 5, "medmix.train": 6, "medmix.run": 7, "medmix.tune": 7, "medmix.bundle": 8, "medmix.experiments": 8,
             "medmix.cli": 9, "medmix.__main__": 10, "medmix.synth": 1, "medmix.synth_layouts": 2, "medmix.gpu": 0}

    def of(mod):
        while mod not in layer:
            mod = mod.rpartition(".")[0]
        return layer[mod]

    bad = [(a, b) for a, deps in _module_graph().items() for b in deps if of(b) > of(a)]
    assert not bad, f"imports against the layering: {bad}"


def test_medmix_never_imports_snakemake():
    for p in PKG.rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+snakemake", p.read_text(), re.M), p


def test_the_cache_path_convention_is_spelled_once_per_side():
    py = [p for p in PKG.rglob("*.py") if re.search(r'"embeddings"\s*/', p.read_text())]
    assert [p.relative_to(REPO).as_posix() for p in py] == ["medmix/encoders/cache.py"]
    smk = [(p.name, line) for p in (REPO / "workflow").rglob("*.smk") for line in p.read_text().splitlines()
           if "embeddings/" in line and not line.lstrip().startswith("#")]
    assert len(smk) == 1 and smk[0][0] == "common.smk" and smk[0][1].startswith("CACHE = "), smk


def test_registries_refuse_a_taken_name():
    from medmix.data.loaders import register_loader
    from medmix.encoders.base import register_encoder
    from medmix.model import register_fusion, register_model
    for deco in (register_loader("mimic4"), register_encoder("hf_text"), register_fusion("intra", "gated"),
                 register_model("medmix")):
        with pytest.raises(ValueError, match="registered already"):
            deco(type("Dup", (), {}))
    with pytest.raises(ValueError, match="expected intra or inter"):
        register_fusion("middle", "x")


def test_dataset_kinds_are_the_loaders_and_the_schema_keys_agree():
    from medmix import config
    from medmix.data.loaders import get_loader, list_loaders
    ds = config.schema()["$defs"]["dataset"]
    assert sorted(ds["properties"]["kind"]["enum"]) == list_loaders()
    assert sorted(r["if"]["properties"]["kind"]["const"] for r in ds["allOf"]) == list_loaders()
    for kind in list_loaders():
        assert {"kind", "root", "split", "modalities"} <= set(config.kind_keys(kind))
        assert kind == "manifest" or get_loader(kind).tasks      # a default task for every fixed-layout kind


def test_every_method_names_a_registered_model_and_specs_refuse_unknown_keys():
    from medmix.methods import METHODS, MethodSpec
    from medmix.model import list_models
    assert {s.arch for s in METHODS.values()} <= set(list_models())
    from medmix.io import MedmixError
    with pytest.raises(MedmixError, match="unknown key"):
        MethodSpec.from_dict({"arch": "medmix", "gates": 3})


def test_fusion_defaults_are_the_schemas_and_train_keys_have_one_owner():
    from medmix import config
    from medmix.methods import MethodSpec
    from medmix.model import TRAINER_KEYS, FusionConfig, fusion_config
    train = config.schema()["$defs"]["train"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(FusionConfig)}
    for k, v in fields.items():
        if k in train:
            assert v == train[k]["default"], k
    assert set(train) == (set(fields) & set(train)) | TRAINER_KEYS
    assert fusion_config(MethodSpec("medmix", intra="mean"), config.validate({"targets": [], "datasets": {}, "encoders": {}})["train"]) \
        == FusionConfig(intra="mean")
    with pytest.raises(config.MedmixError, match="neither fusion"):
        fusion_config(MethodSpec("medmix"), {"d": 8, "modality_dropuot": 0.5})


def test_design_doc_is_in_the_repository_and_code_points_there():
    assert (REPO / "docs" / "design.md").exists()
    cited = [p for p in PKG.rglob("*.py") if re.search(r"(?<!docs/)DESIGN\.md", p.read_text())]
    assert not cited, f"code cites a DESIGN.md that is not in the repository: {cited}"


def test_encoder_spec_is_the_schemas_encoder_entry():
    from medmix import config
    from medmix.config import EncoderSpec
    props = config.schema()["$defs"]["encoder"]["properties"]
    fields = {f.name for f in dataclasses.fields(EncoderSpec)}
    assert fields == set(props)
    assert EncoderSpec().to_dict() == {k: p["default"] for k, p in props.items()}
    filled = config.validate({"targets": [], "datasets": {}, "encoders": {"x": {"kind": "hf_text"}}})["encoders"]["x"]
    assert EncoderSpec.from_dict(filled).to_dict() == filled
    with pytest.raises(config.MedmixError, match="unknown key"):
        EncoderSpec.from_dict({"kind": "hf_text", "max_lenght": 64})


def test_train_job_round_trips_the_rules_json_and_refuses_unknown_keys():
    from medmix import config
    from medmix.config import TrainJob, TrainParams
    from conftest import TINY_CONFIG
    props = config.schema()["$defs"]["train"]["properties"]
    assert TrainParams().to_dict() == {k: p["default"] for k, p in props.items()}
    d = config.train_job(config.validate(TINY_CONFIG), "tiny", "medmix")
    assert TrainJob.from_dict(d).to_dict() == d                      # the rule's --job, unchanged
    with_drop = {**d, "drop": {"modality": "notes", "rate": 1.0, "seed": 0}}
    assert TrainJob.from_dict(with_drop).to_dict() == with_drop
    with pytest.raises(config.MedmixError, match="unknown key"):
        TrainJob.from_dict({**d, "train": {**d["train"], "lamda_kd": 2}})
