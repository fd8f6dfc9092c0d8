// ipywidgets 8.1 draws a slider's knob as a noUiSlider handle (role="slider") with no accessible
// name: its label is a <label> that is not tied to the knob, so a screen reader announces only
// "slider, 10". This plugin gives every handle the text of its widget's label as aria-label,
// now and whenever JupyterLab adds or redraws a widget.

function nameSliderHandles(root) {
  for (const slider of root.querySelectorAll('.widget-slider')) {
    const label = slider.querySelector(':scope > .widget-label');
    const name = label ? label.textContent.trim() : '';
    if (!name) {
      continue;
    }
    const handles = slider.querySelectorAll('.noUi-handle');
    handles.forEach((handle, i) => {
      const text = handles.length > 1 ? `${name} (${i === 0 ? 'lower' : 'upper'})` : name;
      if (handle.getAttribute('aria-label') !== text) {
        handle.setAttribute('aria-label', text);
      }
    });
  }
}

const plugin = {
  id: 'vanishing-gradients-a11y:slider-names',
  description: 'Gives ipywidgets slider handles the accessible name of their label.',
  autoStart: true,
  activate: () => {
    let queued = false;
    const observer = new MutationObserver(() => {
      if (!queued) {
        queued = true;
        requestAnimationFrame(() => {
          queued = false;
          nameSliderHandles(document.body);
        });
      }
    });
    observer.observe(document.body, { childList: true, subtree: true, characterData: true });
    nameSliderHandles(document.body);
  }
};

export default plugin;
