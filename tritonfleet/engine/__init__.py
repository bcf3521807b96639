"""The engine: inventory, playbooks, connections, the per-host executor, the module contract and reports.

Nothing here knows Triton: `tritonfleet.triton` holds that knowledge and `tritonfleet.modules` joins the two.
"""
