// Passkey pages: run the WebAuthn ceremony with @simplewebauthn/browser (served by this server) and
// post the answer in the page's form. No inline script anywhere (CSP script-src 'self').
(function () {
  'use strict';
  var lib = window.SimpleWebAuthnBrowser;
  var unsupported = document.getElementById('webauthn-unsupported');
  var failed = document.getElementById('webauthn-failed');
  var forms = document.querySelectorAll('form[data-webauthn]');

  function show(el, text) {
    if (!el) return;
    if (text) el.textContent = text;
    el.hidden = false;
  }

  function explain(err) {
    var name = err && err.name;
    if (name === 'NotAllowedError') return 'The passkey prompt was cancelled or timed out, or no passkey for this site is on this device. Try again, or use another device or security key.';
    if (name === 'InvalidStateError') return 'This authenticator already holds a passkey for your account.';
    if (name === 'SecurityError') return 'The browser refused the passkey request for this site address.';
    return 'The passkey could not be used (' + (name || 'error') + '). Try again.';
  }

  if (!lib || !lib.browserSupportsWebAuthn()) {
    show(unsupported);
    forms.forEach(function (form) {
      var button = form.querySelector('button');
      if (button) button.disabled = true;
    });
    return;
  }

  forms.forEach(function (form) {
    var mode = form.getAttribute('data-webauthn');
    var data = document.getElementById('webauthn-options-' + mode);
    if (!data) return;
    form.addEventListener('submit', function (event) {
      if (form.dataset.ready === 'yes') return;
      event.preventDefault();
      var optionsJSON = JSON.parse(data.textContent);
      var ceremony = mode === 'register'
        ? lib.startRegistration({ optionsJSON: optionsJSON })
        : lib.startAuthentication({ optionsJSON: optionsJSON });
      ceremony.then(function (answer) {
        form.querySelector('input[name="credential"]').value = JSON.stringify(answer);
        form.dataset.ready = 'yes';
        form.submit();
      }, function (err) {
        show(failed, explain(err));
      });
    });
  });
}());
