() => {
  // On a phone-width window the sidebar would cover the chat: start with it closed.
  if (window.innerWidth >= 768) return;
  const close = (tries) => {
    const toggle = document.querySelector("#tdm-sidebar .toggle-button");
    if (toggle) { toggle.click(); return; }
    if (tries > 0) setTimeout(() => close(tries - 1), 100);
  };
  close(50);
}
