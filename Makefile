# The course's entry points. `make lab` opens the course, `make test` runs every test.
# Both create .venv on first use and reinstall only when requirements.txt or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GRADE  := $(BIN)/python -m course_lib.grading
LESSONS := $(wildcard notebooks/[0-9][0-9]_*.ipynb)

.PHONY: setup lab test student release autograde grades feedback clean FORCE

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

lab: setup student
	$(BIN)/jupyter lab student/00_welcome.ipynb

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
