# The course's entry points. `make lab` opens the course, `make test` runs every test.
# Both create .venv on first use and reinstall only when requirements.txt or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GRADE  := $(BIN)/python -m course_lib.grading
LESSONS := $(wildcard notebooks/[0-9][0-9]_*.ipynb)

.PHONY: setup lab site test student release autograde grades feedback clean FORCE

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# The learner's copy: every lesson with its exercise solutions replaced by stubs (nbgrader).
# Rebuilt when a lesson changed or a released notebook is gone (course/ or student/ deleted).
LESSON_IDS := $(basename $(notdir $(LESSONS)))
RELEASED   := $(foreach l,$(LESSON_IDS),course/release/$(l)/$(l).ipynb student/$(l).ipynb)
student/.built: $(STAMP) $(LESSONS) $(if $(filter-out $(wildcard $(RELEASED)),$(RELEASED)),FORCE)
	$(GRADE) release
	@touch $@

FORCE:

student: student/.built

# JupyterLab on lesson 00 of the student version: the URL it prints opens the lesson. As root (a
# container, CI) it adds --allow-root, which JupyterLab requires there. Options pass through:
#   make lab ARGS="--no-browser --port 8890"
# The settings override makes JupyterLab save widget state in the notebook (binder/overrides.json).
# As root the URL and all of this are the same; only --allow-root is added.
LAB_ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_OVERRIDES  := $(VENV)/share/jupyter/lab/settings/overrides.d/vanishing-gradients.json

$(LAB_OVERRIDES): binder/overrides.json | $(STAMP)
	@mkdir -p $(dir $@)
	cp $< $@

# The course's JupyterLab extension: slider handles get their label as accessible name.
LAB_A11Y := $(VENV)/share/jupyter/labextensions/vanishing-gradients-a11y

$(LAB_A11Y)/package.json: jupyterlab-a11y/dist/package.json | $(STAMP)
	rm -rf $(LAB_A11Y) && mkdir -p $(LAB_A11Y)
	cp -R jupyterlab-a11y/dist/. $(LAB_A11Y)/

lab: setup student $(LAB_OVERRIDES) $(LAB_A11Y)/package.json
	$(BIN)/jupyter lab $(LAB_ALLOW_ROOT) --LabApp.default_url=/lab/tree/student/00_welcome.ipynb $(ARGS)

# The course website (Jupyter Book) from the stored lessons, offline: site/_build/html/index.html.
# SITE_ARGS=--check also checks every internal link and anchor.
site: setup
	$(BIN)/python tools/build_site.py $(SITE_ARGS)

test: setup
	$(BIN)/python -m pytest

# --- For instructors (see README) -------------------------------------------------------------
# ARGS passes more to the grader: lesson names, --force, --student ID, --timeout S, --no-sandbox...
release: student

autograde: setup
	@test -n "$(SUBMISSIONS)" || { echo "usage: make autograde SUBMISSIONS=path/to/submitted [ROSTER=roster.csv] [JOBS=n] [ARGS='01_the_problem --force']"; exit 2; }
	$(GRADE) autograde "$(SUBMISSIONS)" $(if $(ROSTER),--roster "$(ROSTER)") $(if $(JOBS),--jobs $(JOBS)) $(ARGS)

grades: setup
	$(GRADE) export --to course/grades.csv

feedback: setup
	$(GRADE) feedback $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info student course

# --- For maintainers ----------------------------------------------------------------------------
.PHONY: bench
bench: setup
	$(BIN)/python tools/bench.py
