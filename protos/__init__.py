"""Protocol buffer sources we own (`protos/**.proto`) and their generated Python (`protos.gen`).

Regenerate with `python -m protos.generate`; a test fails when the committed
code under `protos/gen/` differs from what the pinned grpcio-tools would generate.
"""
