"""A Python snippet that runs an exported ONNX file with ONNX Runtime in a process where adaptformer cannot be
imported (``python -c RUN_ALONE MODEL X.npy OUT.npy``): the file must compute the logits on its own."""

RUN_ALONE = """
import sys
sys.modules["adaptformer"] = None
import json, numpy as np, onnxruntime as ort
path, x_path, out_path = sys.argv[1:]
meta = json.load(open(path + ".json"))
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
np.save(out_path, session.run(None, {meta["input"]["name"]: np.load(x_path)})[0])
"""
