"""kvtool in Jupyter: a VM form, a lab builder with plan preview and Apply, live status tables, console tails.

    from kvtool.notebook import LabBuilder, LiveTable, ConsoleView, status_frame
    builder = LabBuilder(stack="class-101")    # form → lab → Preview plan → Apply / Destroy
    live = LiveTable(stack="class-101")         # the stack's VMs, kept current by a watch
    df = status_frame(stack="class-101")        # a plain DataFrame for your own analysis
    room = Classroom("os101", "template.yaml")  # roster upload → one VM per student, time left, extend, reset

Widgets connect on first use with kvtool's usual kubeconfig resolution
(--kubeconfig > $KUBECONFIG > the embedded cluster > ~/.kube/config).
"""

from kvtool.notebook.classroom import Classroom
from kvtool.notebook.console import ConsoleView
from kvtool.notebook.forms import InvalidForm, VMForm
from kvtool.notebook.frames import start_latency_frame, status_frame
from kvtool.notebook.lab import Lab, LabBuilder
from kvtool.notebook.live import LiveTable
from kvtool.notebook.manifest import ImageChoice, image_choices
from kvtool.notebook.planview import PlanView, render_html
from kvtool.notebook.session import Connection, Portal, connect

__all__ = ["Classroom", "Connection", "ConsoleView", "ImageChoice", "InvalidForm", "Lab", "LabBuilder", "LiveTable",
           "PlanView", "Portal", "VMForm", "connect", "image_choices", "render_html", "start_latency_frame",
           "status_frame"]
