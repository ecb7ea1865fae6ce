"""gunicorn's settings. gunicorn reads ./gunicorn.conf.py itself when started from the repository root
(the Procfile, docker-compose.yml, warmpool dev, the tests); flags on its command line still win.

With WARMPOOL_LOG_FORMAT=json, the access log (stdout) and the error log (stderr) are JSON lines,
the same as the workers' and beat's (app/logs.py).
"""

from app import logs

accesslog = "-"
if logs.log_format() == "json":
    logconfig_dict = logs.json_config()
