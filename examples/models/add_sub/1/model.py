"""add_sub: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (FP32, shape [4])."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_name = args["model_name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
                out0 = pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(np.float32))
                out1 = pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
            except Exception as exc:  # one bad request must not fail the whole batch
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.model_name}: {exc}")))
        return responses

    def finalize(self):
        pass
