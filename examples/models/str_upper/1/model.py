"""str_upper: upper-cases every string of TEXT ([batch, -1] BYTES) into UPPER."""

import numpy as np
import triton_python_backend_utils as pb_utils


def _upper(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").upper().encode("utf-8")
    return str(value).upper().encode("utf-8")


class TritonPythonModel:
    def initialize(self, args):
        self.model_name = args["model_name"]

    def execute(self, requests):
        # Dynamic batching hands several requests at once; answer each one in order.
        responses = []
        for request in requests:
            try:
                text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
                flat = [_upper(v) for v in text.reshape(-1)]
                upper = np.array(flat, dtype=np.object_).reshape(text.shape)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("UPPER", upper)]))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.model_name}: {exc}")))
        return responses

    def finalize(self):
        pass
