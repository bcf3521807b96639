"""Everything tritonfleet knows about Triton and its Python backend: layout and flags, the bundle, model
validation, host facts, the server client, the smoke test, failure signatures and the doctor."""
