"""Speed and peak memory of ``python -m data_prep.dapo17k`` on a file the size of DAPO-Math-17k as published.

Builds a synthetic parquet in the DAPO schema (default 1.79M rows: 17.4k distinct problems, each repeated about 103
times, rows shuffled, a fresh uuid per row, integer ground truths), then runs the tool on it in a subprocess and
reads that process's peak resident memory from ``wait4``. Target (issue 4): under 60 s and under 4 GB on a 2-core
machine.

    python benchmarks/bench_dapo_prep.py [--rows 1790000] [--unique 17400] [--val-size 512] [--keep DIR]
"""

from __future__ import annotations

import argparse
import binascii
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.schema import render_prompt  # noqa: E402

TARGET_SECONDS = 60.0
TARGET_PEAK_GB = 4.0
_VOCABULARY = (
    "let find the number of positive integers such that sum product triangle circle radius area equal to "
    "real numbers satisfy polynomial roots remainder when divided by probability chosen uniformly at random "
    "sequence defined for all compute greatest common divisor least value maximum minimum digits base"
)
_LATEX = ["$x^2 + y^2 = 25$", "$\\frac{a}{b}$", "$n \\geq 1$", "$\\sqrt{2}$", "$a_{n+1} = 2a_n + 1$", "$ABC$"]


def synthetic_problems(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct problem statements of 40 to 120 words (DAPO problems are a few hundred characters)."""
    problems = []
    for number in range(count):
        words = rng.choice(_VOCABULARY.split(), size=int(rng.integers(40, 120))).tolist()
        for position in rng.integers(0, len(words), size=3).tolist():
            words[position] = _LATEX[int(rng.integers(len(_LATEX)))]
        problems.append(f"Problem {number}: " + " ".join(words) + "?")
    return problems


def uuid_strings(count: int, rng: np.random.Generator) -> pa.Array:
    """``count`` random uuid-formatted strings, built in arrow (a Python loop would dominate the set-up time)."""
    hex_digits = np.frombuffer(binascii.hexlify(rng.bytes(16 * count)), dtype="S32")
    flat = pa.array(hex_digits, type=pa.binary(32)).cast(pa.binary()).cast(pa.string())
    pieces = [pc.utf8_slice_codeunits(flat, start, stop) for start, stop in ((0, 8), (8, 12), (12, 16), (16, 20))]
    return pc.binary_join_element_wise(*pieces, pc.utf8_slice_codeunits(flat, 20, 32), "-")


def write_synthetic_dapo(path: Path, rows: int, unique: int, seed: int = 0) -> None:
    """A parquet in the published DAPO-Math-17k schema with ``rows`` rows over ``unique`` distinct problems."""
    rng = np.random.default_rng(seed)
    problems = synthetic_problems(unique, rng)
    answers = [str(value) for value in rng.integers(-100, 100_000, size=unique).tolist()]
    prompts = pa.array([[{"content": render_prompt(problem), "role": "user"}] for problem in problems])
    reward_models = pa.array([{"ground_truth": answer, "style": "rule-lighteval/MATH_v2"} for answer in answers])
    # Every problem at least once, the rest drawn at random, then shuffled: duplicates spread over the whole file.
    codes = np.concatenate([np.arange(unique), rng.integers(0, unique, size=rows - unique)])
    codes = pa.array(rng.permutation(codes))
    table = pa.table(
        {
            "data_source": pa.array(np.full(rows, "math_dapo", dtype=object), type=pa.string()),
            "prompt": prompts.take(codes),
            "ability": pa.array(np.full(rows, "MATH", dtype=object), type=pa.string()),
            "reward_model": reward_models.take(codes),
            "extra_info": pa.StructArray.from_arrays([uuid_strings(rows, rng)], names=["index"]),
        }
    )
    pq.write_table(table, path)


def run_measured(command: list[str]) -> tuple[float, float, float, int, str]:
    """(wall seconds, CPU seconds, peak resident GB, exit status, output) of ``command`` run as a child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        output.seek(0)
        text = output.read()
    cpu_seconds = usage.ru_utime + usage.ru_stime
    return seconds, cpu_seconds, usage.ru_maxrss / 1024**2, child.returncode, text  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_790_000, help="rows in the synthetic file (default 1790000)")
    parser.add_argument("--unique", type=int, default=17_400, help="distinct problems (default 17400)")
    parser.add_argument("--val-size", type=int, default=512, help="validation problems held out (default 512)")
    parser.add_argument("--keep", help="write the synthetic file and outputs here instead of a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_dapo_prep_") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = work / "dapo-math-17k-synthetic.parquet"
        start = time.perf_counter()
        # Built in a child process: the measured run is forked from this one, and a parent holding the 1.79M-row
        # table would lend the child its resident pages until exec, inflating the peak memory read for the child.
        builder = multiprocessing.get_context("spawn").Process(
            target=write_synthetic_dapo, args=(source, args.rows, args.unique)
        )
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            raise SystemExit(f"building the synthetic file failed with status {builder.exitcode}")
        print(
            f"synthetic input: {args.rows} rows, {args.unique} distinct problems, "
            f"{source.stat().st_size / 1024**2:.0f} MiB on disk (built in {time.perf_counter() - start:.1f} s)"
        )
        command = [
            sys.executable,
            "-m",
            "data_prep.dapo17k",
            "--input",
            str(source),
            "--output-dir",
            str(work / "out"),
            "--val-size",
            str(args.val_size),
            "--seed",
            "0",
            "--no-progress",
        ]
        seconds, cpu_seconds, peak_gb, status, output = run_measured(command)
        print(output.rstrip())
        if status != 0:
            raise SystemExit(f"data_prep.dapo17k failed with status {status}")
        written = sum(pq.read_metadata(path).num_rows for path in (work / "out").glob("*.parquet"))
        if written != args.unique:
            raise SystemExit(f"expected {args.unique} rows written, found {written}")
        print(f"cpu cores: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}")
        print(f"wall time:   {seconds:6.1f} s   (target < {TARGET_SECONDS:.0f} s: {seconds / TARGET_SECONDS:.2f} x)")
        print(f"peak memory: {peak_gb:6.2f} GB  (target < {TARGET_PEAK_GB:.0f} GB: {peak_gb / TARGET_PEAK_GB:.2f} x)")
        print(f"cpu time:    {cpu_seconds:6.1f} s   (user + system; less sensitive to other load on the machine)")
        print(f"throughput:  {args.rows / seconds / 1e3:6.0f} k rows/s")


if __name__ == "__main__":
    main()
