"""Results that travel: `autotune db export` / `db import` between real databases (SQLite, and the
PostgreSQL server when AUTOTUNE_TEST_PG is set), deduplicated, never overwriting, one transaction."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from conftest import FAST

import autotune
from autotune.cli import cli
from autotune.store import Store
from autotune.store import tables as m

pytestmark = pytest.mark.filterwarnings("ignore")

PG = os.environ.get("AUTOTUNE_TEST_PG")
SPACE = {"compile.target": ["off"], "quantization.method": ["none", "torchao-int8-weight"],
         "cache.ladder": ["x2", "one"]}
OTHER_HW = "feedfacefeedface"


def run(*args):
    return CliRunner().invoke(cli, list(args))


def identities(url, newest_only: bool = False) -> list[tuple]:
    """Every measurement, in the database's order, as (what identifies it across databases, its
    study and figures); ``newest_only``: the newest of each identity, what an import keeps."""
    with Store(url).session() as s:
        rows = [((r.model.name, r.target.hardware_key, r.target.versions_key, r.workload.key, r.recipe.key_hash,
                  r.reuse_key or "", r.status), (r.study or "", json.dumps(r.figures, sort_keys=True)))
                for r in s.query(m.Measurement).order_by(m.Measurement.id)]
    if newest_only:
        last = {key: i for i, (key, _) in enumerate(rows)}
        rows = [row for i, row in enumerate(rows) if last[row[0]] == i]
    return rows


@pytest.fixture(scope="module")
def source_db(tmp_path_factory, tiny_model) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('laptop') / 'laptop.db'}"
    autotune.search(tiny_model, trials=3, db=url, workload={"prompt_tokens": 8, "new_tokens": 6, "max_context": 64}, space=SPACE,
                    measure=FAST, study="laptop", progress=False)
    return url


@pytest.fixture(scope="module")
def exported(source_db, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("file") / "results.jsonl"
    r = run("db", "export", "-o", str(path), "--db", source_db)
    assert r.exit_code == 0, r.output
    return str(path)


@pytest.fixture(params=["sqlite", "postgresql"])
def dest_db(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'team.db'}"
    if not PG:
        pytest.skip("AUTOTUNE_TEST_PG not set: .ci/run starts PostgreSQL and sets it")
    from sqlalchemy import create_engine, text

    engine = create_engine(PG)  # a schema of our own: other tests' tables in public are left alone
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS autotune_transfer CASCADE"))
        conn.execute(text("CREATE SCHEMA autotune_transfer"))
    engine.dispose()
    return PG + ("&" if "?" in PG else "?") + "options=-csearch_path%3Dautotune_transfer"


def test_export_writes_every_measurement(source_db, exported):
    lines = open(exported).read().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "autotune-results" and header["schema"] == Store(source_db).revision()
    assert len(lines) - 1 == len(identities(source_db)) >= 3  # the baseline and the trials
    first = json.loads(lines[1])
    assert first["target"]["fingerprint"]["versions"]["torch"]  # versions travel with the target
    assert first["workload"]["definition"]["new_tokens"] == 6 and first["recipe"]["recipe"]


def test_import_copies_everything_then_nothing_twice(source_db, exported, dest_db):
    r = run("db", "import", exported, "--db", dest_db)
    assert r.exit_code == 0, r.output
    everything, kept = identities(source_db), identities(source_db, newest_only=True)
    assert f"imported {len(kept)} measurements" in r.output
    assert f"({len(everything) - len(kept)} already known" in r.output
    assert identities(dest_db) == kept  # in the source's order: the newest stays the newest
    again = run("db", "import", exported, "--db", dest_db)
    assert again.exit_code == 0 and "imported 0 measurements" in again.output, again.output
    assert f"({len(everything)} already known" in again.output
    assert identities(dest_db) == kept


def test_the_search_reuses_imported_measurements(source_db, exported, dest_db, tiny_model):
    """Imported rows carry the same reuse key a search computes here: nothing is measured again."""
    assert run("db", "import", exported, "--db", dest_db).exit_code == 0
    lines = [json.loads(x) for x in open(exported).read().splitlines()[1:]]
    measured_ok = [d["recipe"]["recipe"] for d in lines if d["measurement"]["status"] == "ok"]
    result = autotune.search(tiny_model, trials=3, db=dest_db, workload={"prompt_tokens": 8, "new_tokens": 6, "max_context": 64},
                             space=SPACE, measure=FAST, study="team", progress=False)
    assert result.baseline["reused"]
    known = [t for t in result.trials if t["recipe"] in measured_ok]
    assert known and all(t["reused"] for t in known)  # (a pruned one is judged again: another incumbent)


def test_recipes_answer_for_hardware_you_do_not_have(exported, dest_db, tiny_model, tmp_path):
    other = tmp_path / "other.jsonl"
    lines = open(exported).read().splitlines()
    moved = [lines[0]]
    for line in lines[1:]:
        d = json.loads(line)
        d["target"]["hardware_key"], d["target"]["fingerprint"]["name"] = OTHER_HW, "Other CPU"
        moved.append(json.dumps(d))
    other.write_text("\n".join(moved) + "\n")
    assert run("db", "import", str(other), "--db", dest_db).exit_code == 0
    here = run("recipes", "--best", tiny_model, "--db", dest_db)
    assert here.exit_code == 1 and "no recipe for" in here.output  # nothing measured on this machine
    there = run("recipes", "--best", tiny_model, "--hardware", OTHER_HW, "--db", dest_db, "--json")
    assert there.exit_code == 0, there.output
    [row] = json.loads(there.stdout)
    newest = {}  # an import keeps the newest of measurements that are the same one (a re-measured baseline)
    for c in map(json.loads, moved[1:]):
        newest[(c["recipe"]["key"], c["workload"]["key"], c["measurement"]["reuse_key"], c["measurement"]["status"])] = c
    candidates = list(newest.values())
    fastest = max((c["measurement"]["figures"]["tokens_per_s"] for c in candidates
                   if c["measurement"]["status"] == "ok" and c["measurement"]["figures"].get("quality", 0) >= 0.95))
    assert row["hardware_key"] == OTHER_HW and row["target"] == "Other CPU"
    assert row["tokens_per_s"] == pytest.approx(fastest)


def test_a_file_from_a_newer_schema_is_refused(exported, dest_db, tmp_path):
    newer = tmp_path / "newer.jsonl"
    lines = open(exported).read().splitlines()
    header = {**json.loads(lines[0]), "schema": "0099_from_the_future"}
    newer.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    r = run("db", "import", str(newer), "--db", dest_db)
    assert r.exit_code == 2 and "written by a newer autotune" in r.output and "Traceback" not in r.output
    assert identities(dest_db) == []


@pytest.mark.parametrize("damage,match", [
    (lambda lines: lines[:3] + ["{ not json"] + lines[3:], "line 4: not valid JSON"),
    (lambda lines: lines[:2] + [json.dumps({"model": {}})] + lines[2:], "line 3: \"target\" must be an object"),
    (lambda lines: lines[1:], "not an autotune results file"),
])
def test_a_damaged_file_imports_nothing(exported, tmp_path, damage, match):
    dest = f"sqlite:///{tmp_path / 'dest.db'}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(damage(open(exported).read().splitlines())) + "\n")
    r = run("db", "import", str(bad), "--db", dest)
    assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output
    assert identities(dest) == []  # the good lines before the bad one were not written either


def test_import_never_overwrites(exported, tmp_path):
    """A database that already holds a measurement keeps its own row (figures and all)."""
    dest = f"sqlite:///{tmp_path / 'dest.db'}"
    assert run("db", "import", exported, "--db", dest).exit_code == 0
    with Store(dest).session() as s:
        row = s.query(m.Measurement).order_by(m.Measurement.id).first()
        row.figures = {**row.figures, "note": "ours"}
    assert run("db", "import", exported, "--db", dest).exit_code == 0
    with Store(dest).session() as s:
        assert s.query(m.Measurement).order_by(m.Measurement.id).first().figures["note"] == "ours"


def test_export_filters(source_db, tiny_model, tmp_path):
    out = tmp_path / "f.jsonl"

    def count(*args):
        r = run("db", "export", "-o", str(out), "--db", source_db, *args)
        assert r.exit_code == 0, r.output
        return len(out.read_text().splitlines()) - 1

    everything = len(identities(source_db))
    assert count("--model", tiny_model) == everything and count("--model", "other") == 0
    assert count("--since", "2000-01-01") == everything and count("--since", "2999-01-01") == 0
    r = run("db", "export", "-o", str(out), "--db", source_db, "--since", "last tuesday")
    assert r.exit_code == 2 and "is not a date" in r.output
