"""token_stream: streams each word of PROMPT as its own response (TOKEN), then the final flag alone.

Decoupled: execute() answers through each request's response sender and returns None.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


def _words(prompt) -> list[bytes]:
    text = prompt.decode("utf-8", errors="replace") if isinstance(prompt, bytes) else str(prompt)
    return [word.encode("utf-8") for word in text.split()]


class TritonPythonModel:
    def initialize(self, args):
        self.model_name = args["model_name"]

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt = pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy().reshape(-1)[0]
                for word in _words(prompt):
                    if request.is_cancelled():
                        break
                    token = pb_utils.Tensor("TOKEN", np.array([word], dtype=np.object_))
                    sender.send(pb_utils.InferenceResponse(output_tensors=[token]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:
                sender.send(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.model_name}: {exc}")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def finalize(self):
        pass
