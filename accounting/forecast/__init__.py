"""The forecast wing: what a request will cost, learnt from the ledger's history.

| module | what |
|---|---|
| ``fit`` | the per-model fit of energy against prompt and output tokens |
| ``robust_fit`` | the robust least-squares it uses |
| ``rows`` | the ledger rows a fit learns from |
| ``calibration`` | how a prompt's size maps to the backend's token count |
| ``stage`` | the forecast made at admission, in every response |
| ``routes`` | ``POST /v1/energy/forecast`` |
| ``cli`` | ``joulegate forecast`` |
"""
