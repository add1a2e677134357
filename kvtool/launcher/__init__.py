"""The launcher: one process per VM pod, running its own libvirtd and the VM's domain.

Modules, one job each: config (arguments + KVTOOL_* environment), libvirtd (the
private daemon) with nsinit (its namespaces' PID 1), volumes (VMI volumes ->
files), domain (libvirt connection, events) with console (console streams),
guestinfo (markers on the console log), status (the DomainStatus and its
watchers), runner (the protocol's commands and the domain's life), server (the
unix socket), main (the process: start, wait, clean up, exit code).
nsinit.py runs as a plain script (stdlib only) and must stay importable without kvtool.
"""
