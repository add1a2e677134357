"""The per-node handler: hands each VMI on its node to that VMI's launcher and reports the domain back.

One handler per node (a DaemonSet in real clusters). It touches only VMIs
labelled with its node, talks to launchers over their unix sockets
(kvtool.launchercom) and writes VMI status; it never creates or deletes pods.
"""
