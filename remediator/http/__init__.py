"""The HTTP routes of the remediator, as Flask blueprints that ``create_app`` registers.

- :mod:`~remediator.http.reads`: ``/healthz``, ``/status``, ``/history``, ``/metrics``
- :mod:`~remediator.http.switches`: ``POST /downgrade``, ``/upgrade``, ``/reset``
- :mod:`~remediator.http.webhooks`: ``POST /webhook/alertmanager``, ``/webhook/notify``

Routes are thin: they check the token, parse the request, call one entry point of the
remediator (or :mod:`remediator.report.queries`) and turn the result into JSON and a status code.
What they share is a :class:`~remediator.http.common.Service`, built by ``create_app``.
"""
