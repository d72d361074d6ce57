//! Saved instances: list, create, show, update, delete; and a spec's instance resolved
//! into its address and login.

use super::*;

pub(super) async fn list_instances(State(app): Shared) -> ApiResult<Json<Value>> {
    let list: Vec<Instance> = app
        .store
        .instances()
        .await?
        .iter()
        .map(Instance::public)
        .collect();
    Ok(Json(json!({ "instances": list })))
}

pub(super) async fn create_instance(
    State(app): Shared,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let mut i: Instance = parse(&body)?;
    i.validate().map_err(ApiError::bad)?;
    i.id = app.store.create_instance(&i).await?;
    Ok((StatusCode::CREATED, Json(i.public())))
}

pub(super) async fn show_instance(
    State(app): Shared,
    Path(name): Path<String>,
) -> ApiResult<Json<Instance>> {
    match app.store.instance(&name).await? {
        Some(i) => Ok(Json(i.public())),
        None => Err(ApiError::not_found("instance", &name)),
    }
}

pub(super) async fn update_instance(
    State(app): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Instance>> {
    let i: Instance = parse(&body)?;
    i.validate().map_err(ApiError::bad)?;
    if !app.store.update_instance(&name, &i).await? {
        return Err(ApiError::not_found("instance", &name));
    }
    show_instance(State(app), Path(i.name)).await
}

pub(super) async fn delete_instance(
    State(app): Shared,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if app.store.delete_instance(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("instance", &name))
    }
}

/// Fills an endpoint that names a saved instance from it.
pub(super) async fn resolve(app: &App, ep: &mut EndpointSpec) -> ApiResult<()> {
    let Some(name) = ep.instance.clone() else {
        return Ok(());
    };
    let saved = app
        .store
        .instance(&name)
        .await?
        .ok_or_else(|| ApiError::bad(format!("no saved instance {name:?}")))?;
    *ep = EndpointSpec {
        instance: Some(name),
        ..saved.endpoint
    };
    Ok(())
}
