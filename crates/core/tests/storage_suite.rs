//! The in-memory store passes the shared log store suite.

use craft_core::testing::run_log_store_suite;
use craft_core::MemLogStore;

#[test]
fn mem_log_store_passes_log_store_suite() {
    run_log_store_suite(MemLogStore::new);
}
