"""echo_types: returns every IN_<TYPE> input as OUT_<TYPE>, and whether IN_OPTIONAL was sent."""

import numpy as np
import triton_python_backend_utils as pb_utils

TYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
         "FP16", "FP32", "FP64", "BYTES")


class TritonPythonModel:
    def initialize(self, args):
        self.model_name = args["model_name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                outputs = []
                batch = None
                for kind in TYPES:
                    tensor = pb_utils.get_input_tensor_by_name(request, f"IN_{kind}")
                    value = tensor.as_numpy()
                    batch = value.shape[0] if batch is None else batch
                    outputs.append(pb_utils.Tensor(f"OUT_{kind}", value))
                given = pb_utils.get_input_tensor_by_name(request, "IN_OPTIONAL") is not None
                outputs.append(pb_utils.Tensor(
                    "OUT_OPTIONAL_GIVEN", np.full((batch or 1, 1), given, dtype=bool)))
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.model_name}: {exc}")))
        return responses

    def finalize(self):
        pass
