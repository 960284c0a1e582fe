# Shortcuts; each target is one script in scripts/, usable without make.
.PHONY: setup test demo demo-ui up stop bench lint lock

setup:            ## venv + pinned requirements (+ dev) + the project, editable + openssh-server/gnupg
	bash scripts/setup.sh

test:             ## the whole test suite (what CI runs)
	bash scripts/test.sh

demo:             ## run braze_segments_to_lytics once against the local sandbox
	bash scripts/demo.sh

demo-ui: up       ## (the same as `make up`)

up:               ## the whole stack in the background: sandboxes, SFTP, S3, Airflow UI on http://127.0.0.1:8080 (admin/admin)
	bash scripts/up.sh

stop:             ## stop everything `make up` started
	bash scripts/stop.sh

bench:            ## all benchmarks (prints tables, writes bench/results_*.md; see bench/README.md)
	bash scripts/setup.sh
	.venv/bin/python -m bench.run_b2l
	.venv/bin/python -m bench.run_l2b_diff
	.venv/bin/python -m bench.run_l2b_delivery

lint:
	.venv/bin/ruff check .

lock:             ## re-pin requirements.txt from the current venv
	.venv/bin/pip freeze > /tmp/requirements.freeze && echo "review /tmp/requirements.freeze and merge into requirements.txt"
