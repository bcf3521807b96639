"""running_sum: SUM is the sum of VALUE over every request of the sequence so far.

The sum lives in a dict keyed by the sequence's correlation ID (the CORRID control); START resets it, END
drops it. Every request of a batch may belong to another sequence: each is read on its own.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


def _control(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        self.model_name = args["model_name"]
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                corrid = int(_control(request, "CORRID"))
                if _control(request, "START"):
                    self.sums[corrid] = 0
                value = pb_utils.get_input_tensor_by_name(request, "VALUE").as_numpy()
                total = self.sums.get(corrid, 0) + int(value.sum())
                self.sums[corrid] = total
                if _control(request, "END"):
                    del self.sums[corrid]
                out = np.full(value.shape, total, dtype=np.int32)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("SUM", out)]))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.model_name}: {exc}")))
        return responses

    def finalize(self):
        pass
