"""Pod networking: the pieces shared by the launcher (the VM's binding behind the pod interface) and
the CLI (expose, port-forward).

docs/runtime.md, "Pod networking", says who creates what. Nothing here imports kubernetes except
`forward` and `expose`, which only the CLI uses: the launcher never talks to the API.
"""
