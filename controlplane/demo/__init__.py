"""`meshplane demo`: a real mesh on one machine (control plane, agents, Envoys, apps, mTLS, traffic).

`DemoMesh` (controlplane.demo.mesh) starts and stops the whole mesh from Python, for tests;
`controlplane.demo.cmd` is the command line around it.
"""
