#!/usr/bin/env python3
"""Tests of scripts/make-backup.sh's sharded format v2 (`--shard-size BYTES`,
docs/contracts.md "Backup format v2 (sharded)"), and that without `--shard-size` it still
makes v1.

Run with .venv-infra's Python, from the repository root or anywhere:

    .venv-infra/bin/python -m unittest infra/test_make_backup.py
    .venv-infra/bin/python infra/test_make_backup.py

Each case runs the script on a temporary tree of about twenty files of varied sizes in
nested directories, with names whose byte order differs from a naive order (`a-b`, `a.txt`,
`a/b`, upper before lower case, non-ASCII last), and reads the result back with the
ordinary tools (`zstd -dc | tar -t`) and Python's tarfile: the shards together hold every
file exactly once, in byte order of its key; each shard's metadata entry (name, size,
sha256, first_key, last_key, objects) matches the shard; each shard is cut where its files'
sizes first reach BYTES. The script needs only bash, find, sort, tar, zstd and sha256sum.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make-backup.sh"

# key -> size. Contents are generated from the key, so every file hashes differently.
FILES = {
    "a.txt": 700,
    "a-b": 1,
    "a/b": 0,
    "a/b.json": 2500,
    "a/ba/c.json": 40,
    "a/b-c/d": 999,
    "a/b.d/e.json": 1000,
    "a/b0/d.json": 1,
    "B/upper.json": 300,
    "b/lower.json": 301,
    "deep/x/y/z/w/v.json": 4096,
    "données/naïve ☃.json": 17,
    "données/zéro": 0,
    "empty-1": 0,
    "empty-2": 0,
    "m/n o/p q.json": 123,
    "z/1": 10,
    "z/10": 10,
    "z/2": 5000,
    "z/é": 64,
    "éclair.json": 256,
}


def byte_order(keys):
    return sorted(keys, key=lambda k: k.encode())


def make_tree(root: Path) -> None:
    for key, size in FILES.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = key.encode()
        path.write_bytes((seed * (size // max(len(seed), 1) + 1))[:size])
    (root / "only-a-dir" / "nested").mkdir(parents=True)  # no files: not in any shard


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def decompress(path: Path) -> bytes:
    return subprocess.run(
        ["zstd", "-dc", str(path)], capture_output=True, check=True
    ).stdout


def tar_listing(path: Path) -> list[str]:
    """`tar -t` of a compressed shard, names as stored (literal, no quoting)."""
    out = subprocess.run(
        ["tar", "-t", "--quoting-style=literal", "-f", "-"],
        input=decompress(path),
        capture_output=True,
        check=True,
    ).stdout
    return out.decode().splitlines()


def strip_dot(name: str) -> str:
    return name[2:] if name.startswith("./") else name


class TestMakeBackupShards(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.src = self.dir / "src"
        make_tree(self.src)
        self.keys = byte_order(FILES)

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def make(self, name: str, *extra: str) -> tuple[Path, dict]:
        out = self.dir / name
        result = run("--src", str(self.src), "--out", str(out), "--id", name, *extra)
        self.assertEqual(result.returncode, 0, result.stderr)
        return out, json.loads((out / "metadata.json").read_text())

    def check_v2(self, out: Path, meta: dict, limit: int) -> list[dict]:
        self.assertEqual(meta["format"], "drpilot.backup/v2")
        self.assertEqual(meta["backup_id"], out.name)
        self.assertEqual(meta["source"]["tool"], "scripts/make-backup.sh")
        self.assertEqual(set(meta["artifacts"]), {"manifests.tar.zst"})
        self.assertFalse((out / "state.tar.zst").exists())
        self.check_artifact(out, "manifests.tar.zst", meta["artifacts"]["manifests.tar.zst"])
        self.check_manifest(out)

        shards = meta["shards"]
        self.assertGreater(len(shards), 0)
        names = [s["name"] for s in shards]
        self.assertEqual(names, [f"state-{i:04d}.tar.zst" for i in range(len(shards))])
        self.assertEqual(
            sorted(p.name for p in out.iterdir()),
            sorted(["manifests.tar.zst", "metadata.json", *names]),
        )

        together = []
        for i, shard in enumerate(shards):
            with self.subTest(shard=shard["name"]):
                self.assertEqual(
                    set(shard), {"name", "sha256", "size", "first_key", "last_key", "objects"}
                )
                path = out / shard["name"]
                self.check_artifact(out, shard["name"], shard)
                listing = tar_listing(path)
                self.assertTrue(all(n.startswith("./") for n in listing), listing)
                keys = [strip_dot(n) for n in listing]
                self.assertEqual(keys, byte_order(keys), "a shard's files are in byte order")
                self.assertEqual(shard["first_key"], keys[0])
                self.assertEqual(shard["last_key"], keys[-1])
                self.assertEqual(shard["objects"], len(keys))
                self.assertLessEqual(shard["first_key"].encode(), shard["last_key"].encode())
                self.check_contents(path, keys)

                sizes = [FILES[k] for k in keys]
                if i < len(shards) - 1:
                    self.assertGreaterEqual(sum(sizes), limit, "closed before reaching BYTES")
                # Cut as soon as BYTES is reached: without its last file every shard
                # (the last included) is below BYTES.
                self.assertLess(sum(sizes) - sizes[-1], limit, "not closed at BYTES")
                together.extend(keys)
        self.assertEqual(together, self.keys)
        for before, after in zip(shards, shards[1:]):
            self.assertLess(before["last_key"].encode(), after["first_key"].encode())
        return shards

    def check_artifact(self, out: Path, name: str, entry: dict) -> None:
        data = (out / name).read_bytes()
        self.assertEqual(entry["size"], len(data), name)
        self.assertEqual(entry["sha256"], hashlib.sha256(data).hexdigest(), name)

    def check_manifest(self, out: Path) -> None:
        """manifests.tar.zst as in v1: one state.json listing every file."""
        with tarfile.open(fileobj=io.BytesIO(decompress(out / "manifests.tar.zst"))) as tar:
            self.assertEqual(tar.getnames(), ["state.json"])
            manifest = json.load(tar.extractfile("state.json"))
        objects = manifest["objects"]
        self.assertEqual([o["key"] for o in objects], self.keys)
        for o in objects:
            data = (self.src / o["key"]).read_bytes()
            self.assertEqual(o["size"], len(data), o["key"])
            self.assertEqual(o["sha256"], hashlib.sha256(data).hexdigest(), o["key"])

    def check_contents(self, path: Path, keys: list[str]) -> None:
        """Regular files only (no directory entries), each with its source's bytes."""
        with tarfile.open(fileobj=io.BytesIO(decompress(path))) as tar:
            members = tar.getmembers()
            self.assertEqual([strip_dot(m.name) for m in members], keys)
            for m in members:
                self.assertTrue(m.isreg(), m.name)
                self.assertEqual(
                    tar.extractfile(m).read(), (self.src / strip_dot(m.name)).read_bytes()
                )

    def test_make_backup_shards(self) -> None:
        out, meta = self.make("sharded", "--shard-size", "1000")
        shards = self.check_v2(out, meta, 1000)
        self.assertGreater(len(shards), 3)

    def test_make_backup_shards_sizes(self) -> None:
        total = sum(FILES.values())
        for limit in (1, 2, 999, 1000, 4096, 5000, total - 1, total, total + 1, 10**15):
            with self.subTest(limit=limit):
                out, meta = self.make(f"size-{limit}", "--shard-size", str(limit))
                shards = self.check_v2(out, meta, limit)
                if limit == 1:
                    # Every file that is not empty closes its shard; empty files join
                    # the next shard.
                    nonempty = [k for k in self.keys if FILES[k] > 0]
                    self.assertEqual([s["last_key"] for s in shards], nonempty)
                if limit >= total:
                    self.assertEqual(len(shards), 1)
                    self.assertEqual(shards[0]["objects"], len(FILES))

    def test_make_backup_shards_byte_order(self) -> None:
        _, meta = self.make("order", "--shard-size", "1")
        keys = [k for s in meta["shards"] for k in (s["first_key"], s["last_key"])]
        # '-' < '.' < '/' < upper case < lower case < non-ASCII, whatever the locale.
        self.assertLess(keys.index("a-b"), keys.index("a.txt"))
        self.assertLess(keys.index("a.txt"), keys.index("a/b.json"))
        self.assertLess(keys.index("B/upper.json"), keys.index("a-b"))
        self.assertEqual(keys[-1], "éclair.json")

    def test_make_backup_shards_format_override(self) -> None:
        _, meta = self.make("override", "--shard-size", "1000", "--format", "drpilot.backup/v9")
        self.assertEqual(meta["format"], "drpilot.backup/v9")
        self.assertIn("shards", meta)

    def test_make_backup_shards_bad_size(self) -> None:
        for value in ("0", "-1", "abc", "", "1.5", "10k", "00"):
            with self.subTest(value=value):
                out = self.dir / "bad"
                result = run("--src", str(self.src), "--out", str(out), "--shard-size", value)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn("--shard-size", result.stderr)
                self.assertFalse(out.exists(), "nothing is written")

    def test_make_backup_shards_refuse_state_tar(self) -> None:
        state_tar = self.dir / "state.tar"
        subprocess.run(
            ["tar", "-C", str(self.src), "-cf", str(state_tar), "."], check=True
        )
        out = self.dir / "both"
        result = run(
            "--src", str(self.src), "--out", str(out),
            "--shard-size", "1000", "--state-tar", str(state_tar),
        )
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("--state-tar", result.stderr)
        self.assertIn("--shard-size", result.stderr)
        self.assertFalse(out.exists(), "nothing is written")

    def test_make_backup_shards_nothing_to_back_up(self) -> None:
        empty = self.dir / "empty"
        (empty / "dir").mkdir(parents=True)
        out = self.dir / "none"
        result = run("--src", str(empty), "--out", str(out), "--shard-size", "1000")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("nothing to back up", result.stderr)
        self.assertFalse(out.exists(), "nothing is written")

    def test_make_backup_without_shard_size_is_v1(self) -> None:
        out, meta = self.make("plain")
        self.assertEqual(meta["format"], "drpilot.backup/v1")
        self.assertEqual(set(meta["artifacts"]), {"state.tar.zst", "manifests.tar.zst"})
        self.assertNotIn("shards", meta)
        self.assertEqual(
            sorted(p.name for p in out.iterdir()),
            ["manifests.tar.zst", "metadata.json", "state.tar.zst"],
        )
        for name, entry in meta["artifacts"].items():
            self.check_artifact(out, name, entry)
        self.check_manifest(out)
        # v1's state.tar.zst holds the directories too, and every file.
        names = [strip_dot(n) for n in tar_listing(out / "state.tar.zst")]
        files = [n for n in names if n in FILES]
        self.assertEqual(files, self.keys)
        self.assertIn("only-a-dir/nested", [n.rstrip("/") for n in names])


if __name__ == "__main__":
    unittest.main()
