"""VMI spec -> libvirt domain XML, and the cloud-init NoCloud ISO the launcher attaches.

Pure and unit-tested: no libvirt connection, no host state. The launcher
resolves images, taps and MACs first and passes them in DomainInputs.

    from kvtool import domain
    xml = domain.domain_xml(domain.DomainInputs(name=..., uuid=..., spec=vmi["spec"], volumes=..., interfaces=...))
"""

from __future__ import annotations

from kvtool.domain.converter import (
    STEPS,
    DomainInputs,
    ResolvedInterface,
    ResolvedVolume,
    domain_xml,
    to_domain,
)
from kvtool.domain.domain import Domain
from kvtool.domain.spec import ConversionError
from kvtool.domain.xmlmodel import XMLModelError

__all__ = ["STEPS", "ConversionError", "Domain", "DomainInputs", "ResolvedInterface", "ResolvedVolume",
           "XMLModelError", "domain_xml", "to_domain"]
