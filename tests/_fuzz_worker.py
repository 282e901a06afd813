"""Runs EP fuzz cases (tests/ep/test_ep_fuzz.py) in a process of its own, so a crash shows as a crash.

Usage: python _fuzz_worker.py JOBS.jsonl FIRST
Each job: {"name", "model", "original", "feeds" (an .npz path), "expect"}. For each job from index FIRST the worker
prints {"start": i} and then {"done": i, "outcome": "ran"|"error", "message", "compare": ...}, one JSON object a
line, flushed: the parent sees which case was running if the process dies.
"""
import json
import sys

import numpy as np


def compare(outputs, reference):
    if len(outputs) != len(reference):
        return f"mismatch: {len(outputs)} outputs, the original has {len(reference)}"
    for got, want in zip(outputs, reference):
        if got.shape != want.shape:
            return f"mismatch: shape {got.shape}, the original gives {want.shape}"
        if not np.allclose(got, want, rtol=0, atol=1e-4, equal_nan=True):
            return "mismatch: values differ"
    return "match"


def main():
    import onnxruntime as ort

    import cortex

    jobs = [json.loads(line) for line in open(sys.argv[1])]
    for i in range(int(sys.argv[2]), len(jobs)):
        job = jobs[i]
        print(json.dumps({"start": i}), flush=True)
        feeds = dict(np.load(job["feeds"]))
        result = {"done": i, "name": job["name"]}
        try:
            outputs = cortex.InferenceSession(job["model"]).run(None, feeds)
            result["outcome"] = "ran"
        except Exception as e:  # ORT raises its own types: any exception is a status that reached Python
            result["outcome"], result["message"] = "error", str(e)[:2000]
        if result["outcome"] == "ran" and job["expect"] in ("match", "any"):
            try:
                reference = ort.InferenceSession(job["original"], providers=["CPUExecutionProvider"]).run(None, feeds)
                result["compare"] = compare(outputs, reference)
            except Exception as e:
                result["compare"] = f"the original fails: {str(e)[:500]}"
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
