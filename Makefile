# Shortcuts; each target is one script in scripts/, usable without make.
.PHONY: setup test demo demo-ui bench lint lock

setup:            ## venv + pinned requirements (+ dev) + the project, editable + openssh-server/gnupg
	bash scripts/setup.sh

test:             ## the whole test suite (what CI runs)
	bash scripts/test.sh

demo:             ## run braze_segments_to_lytics once against the local sandbox
	bash scripts/demo.sh

demo-ui:          ## sandbox + Airflow UI on http://localhost:8080
	bash scripts/demo.sh --ui

bench:            ## all benchmarks (prints tables, writes bench/results_*.md; see bench/README.md)
	bash scripts/setup.sh
	.venv/bin/python -m bench.run_b2l
	.venv/bin/python -m bench.run_l2b_diff
	.venv/bin/python -m bench.run_l2b_delivery

lint:
	.venv/bin/ruff check .

lock:             ## re-pin requirements.txt from the current venv
	.venv/bin/pip freeze > /tmp/requirements.freeze && echo "review /tmp/requirements.freeze and merge into requirements.txt"
