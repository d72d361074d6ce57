//! Saved instances: a deployment's address and login, named, for jobs to refer to.

use super::*;

impl Store {
    pub async fn create_instance(&self, i: &Instance) -> Result<i64, StoreError> {
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO instances (name, topology, addresses, username, password, tls, labels, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(i.name.clone())
        .bind(i.endpoint.topology.as_str())
        .bind(json(&i.endpoint.addresses))
        .bind(i.endpoint.username.clone())
        .bind(i.endpoint.password.clone())
        .bind(i.endpoint.tls as i64)
        .bind(json(&i.labels))
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| exists(e, "instance", &i.name))?;
        Ok(r.try_get("id")?)
    }

    pub async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        let rows = sqlx::query("SELECT * FROM instances ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(instance_row).collect()
    }

    pub async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError> {
        let row = sqlx::query("SELECT * FROM instances WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_row).transpose()
    }

    /// Replaces an instance; a missing password keeps the stored one.
    pub async fn update_instance(&self, name: &str, i: &Instance) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE instances SET name = $1, topology = $2, addresses = $3, username = $4, \
             password = COALESCE($5, password), tls = $6, labels = $7, updated_at = $8 WHERE name = $9",
        )
        .bind(i.name.clone())
        .bind(i.endpoint.topology.as_str())
        .bind(json(&i.endpoint.addresses))
        .bind(i.endpoint.username.clone())
        .bind(i.endpoint.password.clone())
        .bind(i.endpoint.tls as i64)
        .bind(json(&i.labels))
        .bind(now_ms())
        .bind(name.to_string())
        .execute(&self.pool)
        .await
        .map_err(|e| exists(e, "instance", &i.name))?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn delete_instance(&self, name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM instances WHERE name = $1")
            .bind(name.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

fn instance_row(r: &AnyRow) -> Result<Instance, StoreError> {
    let addresses: String = r.try_get("addresses")?;
    let labels: String = r.try_get("labels")?;
    let tls: i64 = r.try_get("tls")?;
    Ok(Instance {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        endpoint: EndpointSpec {
            instance: None,
            topology: {
                let name: String = r.try_get("topology")?;
                Topology::try_from(name).map_err(|e| sqlx::Error::Decode(e.into()))?
            },
            addresses: serde_json::from_str(&addresses)
                .map_err(|e| StoreError::Corrupt(format!("instance addresses: {e}")))?,
            username: r.try_get("username")?,
            password: r.try_get("password")?,
            password_set: false,
            tls: tls != 0,
            // Not a column of saved instances: a job names Sentinel's master itself.
            master_name: None,
        },
        labels: serde_json::from_str::<BTreeMap<String, String>>(&labels)
            .map_err(|e| StoreError::Corrupt(format!("instance labels: {e}")))?,
    })
}
