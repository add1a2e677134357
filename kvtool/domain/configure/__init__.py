"""The configure steps the converter runs in order, grouped by concern (KubeVirt's virtwrap/converter/*)."""
