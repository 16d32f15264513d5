"""The dashboard of the HTTP gateway (`/ui`): apps, runners, charts, requests, playground.

`routes.py` serves a static page (`static/`) and the JSON API it reads; `views.py` builds
that JSON; `forms.py` turns an endpoint's input schema into the playground's form;
`history.py` keeps the last hour of queue depth and request rate; `dashboard.py` is what
the gateway hands the routes besides its planes (runners, stored request times, the
sampler's task). docs/dashboard.md describes it, and why the key lives where it does.
"""
