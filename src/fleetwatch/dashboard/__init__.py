"""``fleetwatch dashboard``: a read-only web view of the fleet (Starlette, Jinja2, Plotly)."""
