#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_runtime::service::service_main(saga_inventory::InventoryHandler, &saga_inventory::MIGRATIONS).await
}
