//! marzban-sync
